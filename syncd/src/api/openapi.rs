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
                    "413": answer("The body is over 128 MiB."),
                    "500": answer("Integrity or storage failure."),
                    "502": answer("The sync layer's network or files failed (the host out of reach)."),
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
