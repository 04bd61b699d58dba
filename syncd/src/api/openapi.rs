//! The local API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`: the routes by hand,
//! every schema derived from the API's own types (`api::wire`, with `schemars`), so the
//! document describes what the daemon reads and writes and cannot drift from it.
//!
//! Invariant: every `$ref` points inside the document (`#/components/schemas/…`), so a
//! validator needs nothing from outside to check a request or an answer against it.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::local::Outcome;
use super::wire;

/// Where the schemas are, in the document.
const COMPONENTS: &str = "#/components/schemas/";

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let request = generator.subschema_for::<wire::Request>();
    let outcome = generator.subschema_for::<Outcome>();
    let health = generator.subschema_for::<Health>();
    let changes = generator.subschema_for::<wire::ChangesOutcome>();
    let upload = generator.subschema_for::<wire::UploadOutcome>();
    let schemas = generator.take_definitions(true);
    let answer = |what: &str| json!({"description": what, "content": {"application/json": {"schema": outcome}}});
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Carnet local API",
            "version": "1",
            "description": "The daemon's Unix socket (DIR/carnet.sock, mode 0600), HTTP/1.1 and JSON. Ids are hex strings, times RFC 3339 (UTC with milliseconds), enums lower-case words, bytes base64; README \"Local API\".",
        },
        "paths": {
            "/v1/call": {"post": {
                "operationId": "call",
                "summary": "Runs one operation: {\"op\": NAME, …fields}.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
                "responses": {
                    "200": answer("Done: {\"ok\": {\"kind\", \"value\"}}."),
                    "400": answer("Refused, nothing changed: invalid (a request that does not decode, an id, time or word that is not one), key, refused, tls, pki."),
                    "403": answer("Denied by the access rules, and traced."),
                    "404": answer("Not found."),
                    "409": answer("Another host daemon's transaction collided with it: nothing kept, send it again."),
                    "413": answer("The call is over 128 MiB: send a large document body ahead with POST /v1/bodies."),
                    "500": answer("Integrity or storage failure."),
                    "502": answer("The sync layer's network or files failed (the host out of reach)."),
                },
            }},
            "/v1/bodies": {"post": {
                "operationId": "upload",
                "summary": "Holds a document's body, sent as raw bytes, for the call that files it: name the token answered in document.upload of put_document or replace_document, within 10 minutes, once. For bodies of any size (up to 2 GiB); held in the daemon's memory, never on disk in clear.",
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
                "responses": {
                    "200": {"description": "{\"ok\": {\"upload\", \"bytes\"}}: held.", "content": {"application/json": {"schema": upload}}},
                    "400": {"description": "{\"error\": …}: the body broke off.", "content": {"application/json": {"schema": upload}}},
                    "413": {"description": "{\"error\": …}: over 2 GiB, or the daemon holds too many bodies not filed yet.", "content": {"application/json": {"schema": upload}}},
                },
            }},
            "/v1/changes": {"get": {
                "operationId": "changes",
                "summary": "The change feed: what changed in the replica after a cursor (documents, dossiers' heads and closures, grants, notifications, the sync state), ids only, in commit order; a long poll with wait.",
                "parameters": [
                    {"name": "since", "in": "query", "required": false, "description": "The cursor: last_seq of the previous answer; absent or now: from now on (read the state first, then follow).", "schema": {"oneOf": [{"type": "integer", "minimum": 0}, {"const": "now"}]}},
                    {"name": "wait", "in": "query", "required": false, "description": "Seconds to wait for a change when there is none yet (0 to 300; 0 by default).", "schema": {"type": "integer", "minimum": 0, "maximum": super::local::MAX_WAIT_SECONDS}},
                    {"name": "limit", "in": "query", "required": false, "description": "Most entries in one answer (1 to 1000; 1000 by default): follow from last_seq for the rest.", "schema": {"type": "integer", "minimum": 1, "maximum": super::local::CHANGES_PAGE}},
                ],
                "responses": {
                    "200": {"description": "{\"ok\": {\"results\", \"last_seq\"}}: the entries, possibly none once the wait ended.", "content": {"application/json": {"schema": changes}}},
                    "400": {"description": "{\"error\": …}: a parameter that does not parse, or a cursor ahead of this replica's feed.", "content": {"application/json": {"schema": changes}}},
                    "410": {"description": "{\"gone\": {\"floor\", \"last_seq\", \"message\"}}: the cursor is older than the oldest entry kept: read the state again, then follow from last_seq.", "content": {"application/json": {"schema": changes}}},
                    "500": {"description": "{\"error\": …}: integrity or storage failure.", "content": {"application/json": {"schema": changes}}},
                },
            }},
            "/v1/health": {"get": {
                "operationId": "health",
                "summary": "The replica's role, site id and name.",
                "responses": {"200": {"description": "The replica.", "content": {"application/json": {"schema": health}}}},
            }},
            "/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": {"description": "The OpenAPI 3.1 document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {"schemas": schemas},
    })
}

/// A schema of the document that checks one value: a request (`Request`), an answer
/// (`Outcome`), the health answer (`Health`), or any schema of its components.
pub fn schema_of(document: &Value, name: &str) -> Value {
    let mut schema = json!({"$ref": format!("{COMPONENTS}{name}")});
    schema["components"] = document["components"].clone();
    schema
}

/// What `GET /v1/health` answers.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct Health {
    /// `host` or `site`.
    pub role: wire::Name<carnet_store::replica::Role>,
    /// This replica's site id (0 at the host).
    pub site_id: u32,
    /// Its name.
    pub name: String,
}
