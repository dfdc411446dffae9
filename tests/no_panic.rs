//! Hostile input never panics: thousands of mutated plugin configurations (deleted and
//! retyped fields, odd numbers and strings, truncated text) each compile or are refused
//! with one line. A deterministic generator keeps failures reproducible.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use rampart::config::compile;
use serde_json::{json, Value};

/// xorshift64*: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn odd_value(r: &mut Rng) -> Value {
    match r.below(12) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(u64::MAX),
        5 => json!(1.5e300),
        6 => json!(""),
        7 => json!("1x"),
        8 => json!("x".repeat(r.below(5000))),
        9 => json!([]),
        10 => json!({}),
        _ => json!("header:\u{0}\u{ffff}{}"),
    }
}

/// Replaces, deletes or adds something somewhere in `v`.
fn mutate(v: &mut Value, r: &mut Rng) {
    match v {
        Value::Object(map) if !map.is_empty() && r.below(4) != 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = keys[r.below(keys.len())].clone();
            match r.below(4) {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    map.insert(k, odd_value(r));
                }
                2 => {
                    map.insert(format!("extra{}", r.below(3)), odd_value(r));
                }
                _ => mutate(map.get_mut(&k).unwrap(), r),
            }
        }
        Value::Array(items) if !items.is_empty() && r.below(4) != 0 => {
            let i = r.below(items.len());
            if r.below(3) == 0 {
                items.remove(i);
            } else {
                mutate(&mut items[i], r);
            }
        }
        other => *other = odd_value(r),
    }
}

#[test]
fn mutated_configs_never_panic() {
    let base: Value = serde_json::from_str(include_str!("../filters/examples/stolen-keys.json")).unwrap();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..20_000 {
        let mut v = base.clone();
        for _ in 0..1 + r.below(3) {
            mutate(&mut v, &mut r);
        }
        let mut text = v.to_string().into_bytes();
        if r.below(10) == 0 {
            let cut = r.below(text.len());
            text.truncate(cut);
        }
        match compile(&text) {
            Ok(_) => accepted += 1,
            Err(e) => {
                let line = e.to_string();
                assert!(!line.contains('\n') && line.len() < 400, "error line: {line:?}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 10_000 && accepted > 0,
        "refused {refused}, accepted {accepted}"
    );
}
