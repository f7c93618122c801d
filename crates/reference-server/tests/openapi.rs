//! `/api/openapi.json` is valid OpenAPI 3 and complete. The document (`src/openapi.json`) is
//! written by hand and is the only description of the API; these tests keep it and the
//! router from drifting apart:
//!
//! - every `.route(…)` in the server's sources (every file under `src/`) is documented with
//!   each of its methods, and nothing else is;
//! - on the real router, every documented operation reaches a handler (not the "no such
//!   endpoint" fallback, nor "method not allowed"), and every other method on a documented
//!   path is refused as not allowed;
//! - the document is well-formed (no dangling references, no duplicate keys, which a JSON
//!   parser would otherwise drop silently).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

fn doc() -> Value {
    serde_json::from_str(kiln_server::openapi::OPENAPI_JSON).expect("valid JSON")
}

/// The methods a route can have, as the document names them.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(path, method)` of every documented operation.
fn documented() -> BTreeSet<(String, String)> {
    let doc = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((path.clone(), method.clone()));
        }
    }
    documented
}

/// Every `.rs` file under `dir`, recursively.
fn rust_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(path, method)` of every `.route(…)` in the server's sources, with `{*rest}` as `{rest}`.
fn mounted_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in files {
        let src = std::fs::read_to_string(&file).unwrap();
        // Routes mounted any other way would escape this scan.
        for other in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".fallback_service(",
        ] {
            assert!(
                !src.contains(other),
                "{}: routes mounted with `{other}`: teach tests/openapi.rs to read them",
                file.display()
            );
        }
        for (start, _) in src.match_indices(".route(") {
            // The call's text, up to its balanced closing parenthesis.
            let mut depth = 0;
            let mut end = start;
            for (i, c) in src[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = start + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &src[start..end];
            let path_start = call.find('"').unwrap() + 1;
            let path_len = call[path_start..].find('"').unwrap();
            let path = call[path_start..path_start + path_len].replace("{*", "{");
            for method in METHODS {
                let bare = format!("{method}(");
                let chained = format!(".{method}(");
                let first = call
                    .split(',')
                    .nth(1)
                    .is_some_and(|rest| rest.trim_start().starts_with(&bare));
                if first || call.contains(&chained) {
                    routes.insert((path.clone(), method.to_owned()));
                }
            }
        }
    }
    assert!(routes.len() > 25, "route parsing found {routes:?}");
    routes
}

#[test]
fn every_mounted_route_is_documented_and_nothing_else() {
    let documented = documented();
    let mounted = mounted_routes();
    let missing: Vec<_> = mounted.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&mounted).collect();
    assert!(missing.is_empty(), "undocumented routes: {missing:?}");
    assert!(extra.is_empty(), "documented but not mounted: {extra:?}");
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed_openapi_3() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'));
        let params: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}').map(str::to_owned))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().expect("operationId");
            assert!(
                operation_ids.insert(id.to_owned()),
                "duplicate operationId {id}"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for code in responses.keys() {
                assert!(
                    code == "default" || (code.len() == 3 && code.parse::<u16>().is_ok()),
                    "{method} {path}: bad status {code}"
                );
                assert!(
                    responses[code]["description"].is_string()
                        || responses[code]["$ref"].is_string()
                );
            }
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(
                                p["required"], true,
                                "{method} {path}: path params are required"
                            );
                            p["name"].as_str().unwrap().to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, params, "{method} {path}: path parameters");
            if let Some(sec) = op["security"].as_array() {
                for req in sec {
                    for name in req.as_object().unwrap().keys() {
                        assert!(
                            schemes.contains_key(name),
                            "{method} {path}: unknown scheme {name}"
                        );
                    }
                }
            }
            if let Some(body) = op.get("requestBody") {
                assert!(body["content"]["application/json"]["schema"].is_object());
            }
        }
    }
}

/// A request's outcome as far as routing goes: the status and the JSON error code and
/// message (empty when the body is not a JSON error).
type Answer = (StatusCode, String, String);

async fn answer(server: &common::TestServer, method: Method, path: &str) -> Answer {
    let response = server
        .http
        .request(method, server.url(path))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    (status, field("error"), field("message"))
}

/// `path` with each `{parameter}` filled in (a well-formed id; an asset name for a
/// wildcard), so the router matches it whatever the handler then says.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{path}" => "openapi-probe.txt",
            s if s.starts_with('{') => "00000000-0000-4000-8000-000000000000",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn on_the_real_router_exactly_the_documented_operations_reach_a_handler() {
    let server = common::TestServer::start().await;
    // What the router answers when nothing matches, and when the path matches but the
    // method does not.
    let no_route = answer(&server, Method::GET, "/api/openapi-probe/no-such-route").await;
    assert_eq!(no_route.0, StatusCode::NOT_FOUND, "{no_route:?}");
    let not_allowed = answer(&server, Method::DELETE, "/api/health").await;
    assert_eq!(
        not_allowed.0,
        StatusCode::METHOD_NOT_ALLOWED,
        "{not_allowed:?}"
    );
    assert_ne!(no_route.2, not_allowed.2);

    let documented = documented();
    let paths: BTreeSet<&String> = documented.iter().map(|(path, _)| path).collect();
    let mut unrouted = Vec::new();
    let mut routed_undocumented = Vec::new();
    for path in paths {
        let url = concrete(path);
        for method in METHODS {
            let got = answer(&server, method.to_uppercase().parse().unwrap(), &url).await;
            if documented.contains(&(path.clone(), method.to_owned())) {
                if got == no_route || got == not_allowed {
                    unrouted.push(format!("{method} {path}: {got:?}"));
                }
            } else if got != not_allowed {
                routed_undocumented.push(format!("{method} {path}: {got:?}"));
            }
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented, but the router has no handler: {unrouted:#?}"
    );
    assert!(
        routed_undocumented.is_empty(),
        "routed, but not documented: {routed_undocumented:#?}"
    );
}

/// Walks a JSON document and refuses an object with a key twice (`serde_json::Value` keeps
/// the last one and drops the others without a word). Holds the JSON pointer of the value.
struct UniqueKeys(String);

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = format!("{}/{}", self.0, key.replace('~', "~0").replace('/', "~1"));
            if !seen.insert(key) {
                return Err(A::Error::custom(format!("duplicate key at {at}")));
            }
            map.next_value_seed(UniqueKeys(at))?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(UniqueKeys(format!("{}/{index}", self.0)))?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

fn duplicate_keys(json: &str) -> Result<(), String> {
    UniqueKeys(String::new())
        .deserialize(&mut serde_json::Deserializer::from_str(json))
        .map_err(|e| e.to_string())
}

#[test]
fn the_document_has_no_key_twice() {
    // The check sees a key given twice, however deep.
    let twice = r#"{"paths": {"/a": {"get": {}}, "/b": [{"get": 1, "get": 2}]}}"#;
    let error = duplicate_keys(twice).unwrap_err();
    assert!(
        error.contains("duplicate key at /paths/~1b/0/get"),
        "{error}"
    );
    assert_eq!(
        duplicate_keys(r#"{"a": [{"b": null}, {"b": 1.5}]}"#),
        Ok(())
    );

    duplicate_keys(kiln_server::openapi::OPENAPI_JSON).unwrap();
}
