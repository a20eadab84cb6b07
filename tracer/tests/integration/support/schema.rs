//! Checks JSON lines against `schema/pathtrace.schema.json`, the one schema of every output:
//! every line the integration tests read goes through [`check`].

use std::sync::OnceLock;

use serde_json::Value;

/// The schema as the repository holds it.
const SCHEMA: &str = include_str!("../../../../schema/pathtrace.schema.json");

/// Panics, naming the line and what is wrong with it, unless `line` follows the schema.
pub(crate) fn check(line: &Value) {
    if let Some(why) = violation(line) {
        panic!("output does not follow schema/pathtrace.schema.json: {why}\nline: {line}");
    }
}

/// Why `line` does not follow the schema, or `None` when it does.
fn violation(line: &Value) -> Option<String> {
    static COMPILED: OnceLock<(boon::Schemas, boon::SchemaIndex)> = OnceLock::new();
    let (schemas, index) = COMPILED.get_or_init(|| {
        let json: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        let id = json["$id"]
            .as_str()
            .expect("the schema has an $id")
            .to_string();
        let mut compiler = boon::Compiler::new();
        let mut schemas = boon::Schemas::new();
        compiler
            .add_resource(&id, json)
            .expect("the schema's $id is a URL");
        let index = compiler
            .compile(&id, &mut schemas)
            .expect("the schema compiles");
        (schemas, index)
    });
    schemas
        .validate(line, *index)
        .err()
        .map(|e| format!("{e:#}"))
}
