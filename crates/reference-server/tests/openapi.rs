//! `/api/openapi.json` is valid OpenAPI 3 and complete: every route the server mounts (read
//! from the router's source) is documented with each of its methods, and nothing else is.

use std::collections::BTreeSet;

use serde_json::Value;

fn doc() -> Value {
    serde_json::from_str(kiln_server::openapi::OPENAPI_JSON).expect("valid JSON")
}

/// `(path, method)` of every `.route(…)` in the router sources, with `{*rest}` as `{rest}`.
fn mounted_routes() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
    let mut routes = BTreeSet::new();
    for file in ["lib.rs", "api/mod.rs", "ui.rs"] {
        let src = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
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
            for method in ["get", "post", "patch", "delete", "put"] {
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
    let doc = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((path.clone(), method.clone()));
        }
    }
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
