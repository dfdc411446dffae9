//! filters/rampart.schema.json (draft 4, for Kong's config_schema) against the filter's
//! own validation: every example passes both; every malformed config that a schema can
//! express is refused by both.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod corpus;

use boon::{Compiler, Schemas};
use rampart::config::compile;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Schema {
    schemas: Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn load() -> Schema {
        let path = root().join("filters/rampart.schema.json");
        let text = std::fs::read_to_string(&path).expect("schema file");
        let doc: Value = serde_json::from_str(&text).expect("schema is JSON");
        assert_eq!(
            doc["$schema"], "http://json-schema.org/draft-04/schema#",
            "Kong needs draft 4"
        );
        let mut schemas = Schemas::new();
        let mut compiler = Compiler::new();
        compiler.add_resource("rampart.schema.json", doc).expect("add schema");
        let index = compiler
            .compile("rampart.schema.json", &mut schemas)
            .unwrap_or_else(|e| panic!("schema: {e:#}"));
        Schema { schemas, index }
    }

    fn accepts(&self, v: &Value) -> bool {
        self.schemas.validate(v, self.index).is_ok()
    }
}

/// Refusals the filter makes that a draft-4 schema cannot express (they need to compare
/// values across fields or inside a duration).
const FILTER_ONLY: &[&str] = &[
    "is used by an earlier layer",
    "is not one of the tiers",
    "one counter",
    "ms..=",             // duration ranges, e.g. "0s"
    "needs a top-level", // cluster layer without a sidecar block
];

#[test]
fn every_example_passes_schema_and_filter() {
    let schema = Schema::load();
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("filters/examples")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            assert!(schema.accepts(&v), "{} fails the schema", path.display());
            assert!(compile(text.as_bytes()).is_ok(), "{} fails the filter", path.display());
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn schema_and_filter_agree_on_malformed_configs() {
    let schema = Schema::load();
    let mut checked = 0;
    for (text, path, reason) in corpus::cases() {
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let err = compile(text.as_bytes())
            .map(|_| ())
            .expect_err("corpus cases are malformed")
            .to_string();
        if FILTER_ONLY.iter().any(|f| err.contains(f)) {
            continue;
        }
        assert!(
            !schema.accepts(&v),
            "schema accepts what the filter refuses ({path} {reason}): {text}"
        );
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} cases compared");
}
