//! The `carnet` command line as a library: its clap definitions (`args`), shared by the binary
//! and by the tests that check the help every command and option gives.

pub mod args;
