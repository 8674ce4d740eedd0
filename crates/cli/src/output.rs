//! Printing results and errors, as text for people or JSON for programs.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::args::Output;

/// Prints a successful result: JSON as given, or its text rendering.
pub fn success(output: Output, value: &Value, text: impl FnOnce() -> String) -> ExitCode {
    match output {
        Output::Json => println!("{value}"),
        Output::Text => println!("{}", text()),
    }
    ExitCode::SUCCESS
}

/// Prints an error (to stdout as JSON, or to stderr as text) and fails.
pub fn failure(output: Output, error: &cairn_client::Error) -> ExitCode {
    match output {
        Output::Json => println!("{}", error_json(error)),
        Output::Text => eprintln!("error: {}", error_text(error)),
    }
    ExitCode::FAILURE
}

/// A failure that is not an answer of the server (a connection, a file),
/// named by `code`: to stdout as JSON, or to stderr as text.
pub fn failed(output: Output, code: &str, message: &str) -> ExitCode {
    match output {
        Output::Json => println!(
            "{}",
            json!({"error": {"code": code, "message": message, "indeterminate": false}})
        ),
        Output::Text => eprintln!("error: {message}"),
    }
    ExitCode::FAILURE
}

/// A usage problem found before any request was sent.
pub fn usage(output: Output, message: &str) -> ExitCode {
    match output {
        Output::Json => println!(
            "{}",
            json!({"error": {"code": "usage", "message": message, "indeterminate": false}})
        ),
        Output::Text => eprintln!("error: {message}"),
    }
    ExitCode::from(2)
}

pub fn error_json(error: &cairn_client::Error) -> Value {
    let (code, message) = match error {
        cairn_client::Error::Api { code, message, .. } => (code.clone(), message.clone()),
        cairn_client::Error::Transport { .. } => ("unreachable".to_string(), error.to_string()),
        other => ("client".to_string(), other.to_string()),
    };
    json!({"error": {"code": code, "message": message, "indeterminate": error.is_indeterminate()}})
}

/// One line that says what went wrong and, for writes, whether it may have
/// applied.
pub fn error_text(error: &cairn_client::Error) -> String {
    match error {
        cairn_client::Error::Api { message, code, indeterminate: true, .. } => {
            format!("{message} [{code}; the write may or may not have taken effect]")
        }
        cairn_client::Error::Api { message, code, .. } => format!("{message} [{code}]"),
        other => other.to_string(),
    }
}

/// Bytes as text when they are UTF-8, for people; JSON carries them either as a
/// string or, when not UTF-8, as hex.
pub fn value_json(key: &str, bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({"key": key, "value": text}),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            json!({"key": key, "value_hex": hex})
        }
    }
}

/// A JSON value for people: pretty-printed.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
