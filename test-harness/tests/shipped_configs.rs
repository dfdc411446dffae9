//! The files users copy: every Envoy config validates in a real Envoy, docker-compose.yml
//! passes Debian's `docker-compose config` with every profile and pins its images, and
//! the Kong and APISIX configs carry plugin JSON the filter accepts.

use std::process::Command;

use rampart_test_harness::envoy::envoy_binary;
use rampart_test_harness::{project_file, project_root, read_project_file};
use serde_json::Value;

#[test]
fn every_shipped_envoy_config_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(project_file("filters/envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(envoy_binary())
                .args(["--mode", "validate", "-c"])
                .arg(&path)
                .current_dir(project_root())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}:\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn docker_compose_config_is_valid_and_pinned() {
    let out = Command::new("docker-compose")
        .args([
            "-f",
            "docker-compose.yml",
            "--profile",
            "kong",
            "--profile",
            "apisix",
            "config",
        ])
        .current_dir(project_root())
        .output()
        .unwrap_or_else(|e| panic!("docker-compose (make test installs it): {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: Value = serde_norway::from_slice(&out.stdout).unwrap();
    let services = cfg["services"].as_object().unwrap();
    for name in [
        "redis",
        "envoy-a",
        "envoy-b",
        "sidecar-a",
        "sidecar-b",
        "kong",
        "apisix",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, s) in services {
        let image = s["image"].as_str().unwrap_or_else(|| panic!("{name} has no image"));
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: image {image} is not pinned"
        );
        let long_running = !name.starts_with("upstream") && !name.starts_with("sidecar");
        if long_running {
            assert!(s.get("healthcheck").is_some(), "{name} has no healthcheck");
        }
        if let Some(test) = s["healthcheck"]["test"].as_array() {
            healthcheck_can_run(name, image, test);
        }
        // Every file it mounts from the repository exists (the wasm is built by make).
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v["source"]
                .as_str()
                .or_else(|| v.as_str().and_then(|x| x.split(':').next()))
                .unwrap_or("");
            if !src.contains("target/") && !src.is_empty() {
                assert!(std::path::Path::new(src).exists(), "{name} mounts missing {src}");
            }
        }
    }
}

/// Programs each pinned image is known to have on its PATH (Envoy: Ubuntu; APISIX:
/// Debian; Redis: Alpine with busybox; Kong: Ubuntu with its `kong` CLI). A healthcheck
/// that runs anything else could never pass, and `docker compose up --wait` would hang.
const IMAGE_PROGRAMS: &[(&str, &[&str])] = &[
    ("envoyproxy/envoy:", &["bash", "sh", "envoy"]),
    ("apache/apisix:", &["bash", "sh", "curl"]),
    ("redis:", &["redis-cli", "sh"]),
    ("kong:", &["kong", "bash", "sh"]),
];

/// Bash-only syntax that `/bin/sh` (dash on Debian and Ubuntu images, busybox ash on
/// Alpine) does not run: `/dev/tcp` redirections, `[[`, here-strings, `&>`, `source`.
const BASHISMS: &[&str] = &["/dev/tcp/", "/dev/udp/", "[[", "<<<", "&>", "source "];

/// As far as a check can go without a Docker engine: the program a healthcheck runs
/// exists in its image, and a `CMD-SHELL` line is POSIX sh (no bashisms, and `dash -n`
/// parses it).
fn healthcheck_can_run(name: &str, image: &str, test: &[Value]) {
    let words: Vec<&str> = test.iter().filter_map(Value::as_str).collect();
    let programs = IMAGE_PROGRAMS
        .iter()
        .find(|(prefix, _)| image.starts_with(prefix))
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("{name}: no list of the programs in {image}; add one"));
    match words.as_slice() {
        ["CMD", program, ..] => assert!(
            programs.contains(program),
            "{name}: healthcheck runs {program:?}, which {image} does not have ({programs:?})"
        ),
        ["CMD-SHELL", line] => {
            for b in BASHISMS {
                assert!(
                    !line.contains(b),
                    "{name}: CMD-SHELL runs /bin/sh, which has no {b:?}: {line}"
                );
            }
            if let Ok(out) = Command::new("dash").args(["-n", "-c", line]).output() {
                assert!(out.status.success(), "{name}: dash cannot parse {line:?}");
            }
            let first = line.split_whitespace().next().unwrap_or("");
            assert!(
                programs.contains(&first) || ["exec", "test", "["].contains(&first),
                "{name}: {first:?} is not in {image}"
            );
        }
        other => panic!("{name}: healthcheck {other:?} is neither CMD nor CMD-SHELL"),
    }
}

/// The shipped fleet example with the sidecar reached as Kong/APISIX need it.
fn fleet_as_address() -> Value {
    let mut fleet: Value = serde_json::from_str(&read_project_file("filters/examples/fleet.json")).unwrap();
    fleet["sidecar"]["upstream"] = Value::from("127.0.0.1:8081");
    fleet
}

#[test]
fn kong_files_carry_the_fleet_config_and_the_schema() {
    let kong: Value = serde_norway::from_str(&read_project_file("filters/kong/kong.yml")).unwrap();
    let filter = &kong["services"][0]["filter_chains"][0]["filters"][0];
    assert_eq!(filter["name"], "rampart", "Kong names a filter after its .wasm file");
    let config = &filter["config"];
    rampart::config::compile_value(config).unwrap_or_else(|e| panic!("kong.yml config refused: {e}"));
    assert_eq!(
        config,
        &fleet_as_address(),
        "kong.yml drifted from filters/examples/fleet.json"
    );
    let meta: Value = serde_json::from_str(&read_project_file("filters/kong/rampart.meta.json")).unwrap();
    let schema: Value = serde_json::from_str(&read_project_file("filters/rampart.schema.json")).unwrap();
    assert_eq!(
        meta["config_schema"], schema,
        "rampart.meta.json drifted from filters/rampart.schema.json"
    );
}

#[test]
fn apisix_files_carry_the_fleet_config() {
    let text = read_project_file("filters/apisix/apisix.yaml");
    assert!(
        text.trim_end().ends_with("#END"),
        "APISIX standalone files end with #END"
    );
    let routes: Value = serde_norway::from_str(&text).unwrap();
    let conf = routes["routes"][0]["plugins"]["rampart"]["conf"]
        .as_str()
        .expect("conf is a JSON string");
    rampart::config::compile(conf.as_bytes()).unwrap_or_else(|e| panic!("apisix.yaml conf refused: {e}"));
    assert_eq!(serde_json::from_str::<Value>(conf).unwrap(), fleet_as_address());
    let cfg: Value = serde_norway::from_str(&read_project_file("filters/apisix/config.yaml")).unwrap();
    assert_eq!(cfg["wasm"]["plugins"][0]["name"], "rampart");
    assert_eq!(cfg["wasm"]["plugins"][0]["file"], "/wasm/rampart.wasm");
}
