//! Authorization matrix, every process real: for EVERY operation in the published OpenAPI
//! document (iterated, so a new endpoint cannot be missed), two users (ann, bob) with one
//! live node and workspace each; each request with the wrong user, the wrong node's token,
//! an expired token, a tampered token, no token, and the wrong kind of token is refused with
//! a JSON error (401/403/404) — and the database is byte-for-byte the same afterwards
//! (every row of every table, heartbeat timestamps aside).
#![allow(clippy::disallowed_methods)] // Tests wait on wall-clock time and sign real expiries.

mod e2e_support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e_support::{Api, Kiln, git_repo};
use kiln_core::{NodeId, WorkspaceId};
use kiln_server::tokens::{CallbackClaims, TokenScope, TokenSigner};
use serde_json::{Value, json};
use sqlx::Row;

const KEY: &str = "authz-matrix-secret-key-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(120);

/// One user's world: a project, a running (hanging) task on its own node, a draft task.
struct World {
    api: Api,
    token: String,
    project: String,
    running_task: String,
    draft_task: String,
    session: String,
    node: String,
    workspace: String,
    /// The id of the user's API token.
    token_id: String,
}

async fn world(kiln: &Kiln, dir: &std::path::Path, name: &str) -> World {
    let token = kiln.user_token(name);
    let api = Api::new(&kiln.base, &token);
    let repo = git_repo(&dir.join(name));
    let project = api.project(&repo).await;
    let running = api
        .run_now(&project, &format!("Hold on, {name}\nkiln-demo: hang"))
        .await;
    let running = api.wait_task(&running, LIMIT, |s| s == "in_progress").await;
    let draft = api
        .post(
            &format!("/api/projects/{}/tasks", project["id"].as_str().unwrap()),
            json!({"description": format!("A draft of {name}")}),
        )
        .await;
    let s = |v: &Value, k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_owned()
    };
    World {
        token,
        project: s(&project, "id"),
        running_task: s(&running, "id"),
        draft_task: s(&draft, "id"),
        session: s(&running, "sessionId"),
        node: s(&running, "nodeId"),
        workspace: s(&running, "workspaceId"),
        token_id: api
            .get("/api/tokens")
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["current"] == true)
            .map(|t| s(t, "id"))
            .expect("the current token is listed"),
        api,
    }
}

/// A read-only view of the server's database.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Every row of every table, as text, heartbeat timestamps left out (live nodes beat).
async fn snapshot(db: &Db) -> BTreeMap<String, Vec<String>> {
    match db {
        Db::Sqlite(db) => snapshot_sqlite(db).await,
        Db::Postgres(db) => snapshot_postgres(db).await,
    }
}

async fn snapshot_postgres(db: &sqlx::PgPool) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let sql = format!(
            "SELECT (to_jsonb(t) - 'last_heartbeat_at')::text AS row FROM \"{table}\" t ORDER BY 1"
        );
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(db)
            .await
            .unwrap();
        out.insert(table, rows);
    }
    out
}

async fn snapshot_sqlite(db: &sqlx::SqlitePool) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(db)
            .await
            .unwrap();
        let columns: Vec<String> = columns
            .into_iter()
            .filter(|c| c != "last_heartbeat_at")
            .map(|c| format!("quote(\"{c}\")"))
            .collect();
        let sql = format!(
            "SELECT {} AS row FROM \"{table}\" ORDER BY 1",
            columns.join(" || '|' || ")
        );
        let rows: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("row"))
            .collect();
        out.insert(table, rows);
    }
    out
}

/// Waits until the session's stored messages stop changing (the hanging agent is idle).
async fn settle(api: &Api, session: &str) {
    let mut last = usize::MAX;
    loop {
        let n = api.messages(session).await.len();
        if n == last {
            return;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn node_token(signer: &TokenSigner, node: &str, exp: i64) -> String {
    signer.sign(&CallbackClaims {
        scope: TokenScope::Node,
        node: node.parse::<NodeId>().unwrap(),
        workspace: None,
        iat: unix_now() - 7200,
        exp,
    })
}

fn workspace_token(signer: &TokenSigner, node: &str, workspace: &str, exp: i64) -> String {
    signer.sign(&CallbackClaims {
        scope: TokenScope::Workspace,
        node: node.parse::<NodeId>().unwrap(),
        workspace: Some(workspace.parse::<WorkspaceId>().unwrap()),
        iat: unix_now() - 7200,
        exp,
    })
}

/// `token`'s payload replaced by `claims` under the original signature.
fn swap_payload(token: &str, claims: &CallbackClaims) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = base64url(&serde_json::to_vec(claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The secret with its last-but-one character changed.
fn flip(secret: &str) -> String {
    let mut chars: Vec<char> = secret.chars().collect();
    let i = chars.len() - 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[derive(Clone, Debug)]
enum Cred {
    None,
    Bearer(String),
    Cookie(String),
}

/// One refused-request case: a name, the credentials, the statuses that count as refusal.
struct Case {
    name: &'static str,
    cred: Cred,
    refused: &'static [u16],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_wrong_expired_tampered_and_missing_credentials_and_changes_nothing()
{
    matrix(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_holds_on_postgres_too() {
    let Some((url, name)) = e2e_support::pg_database("authorization matrix postgres").await else {
        return;
    };
    matrix(Some(&url)).await;
    e2e_support::drop_pg_database(&name).await;
}

async fn matrix(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kiln = Kiln::start(&data, database_url, &[("KILN_SECRET_KEY", KEY)]).await;
    let ann = world(&kiln, dir.path(), "ann").await;
    let bob = world(&kiln, dir.path(), "bob").await;
    assert_ne!(
        ann.node, bob.node,
        "each user's task runs on the user's own node"
    );

    // An API token of ann's that expires in a second.
    let short = ann
        .api
        .post("/api/tokens", json!({"name": "short", "expiresInSecs": 1}))
        .await;
    let expired_api = short["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    settle(&ann.api, &ann.session).await;
    settle(&bob.api, &bob.session).await;

    let signer = TokenSigner::new(KEY.as_bytes());
    let later = unix_now() + 3600;
    let past = unix_now() - 60;
    let ann_node_tok = node_token(&signer, &ann.node, later);
    let bob_node_tok = node_token(&signer, &bob.node, later);
    let ann_ws_tok = workspace_token(&signer, &ann.node, &ann.workspace, later);
    let bob_ws_tok = workspace_token(&signer, &bob.node, &bob.workspace, later);
    let other_key = TokenSigner::new(b"not-the-server-key-0123456789abcdef".as_slice());

    let db = match database_url {
        None => Db::Sqlite(
            sqlx::SqlitePool::connect(&format!("sqlite://{}/kiln.db?mode=ro", data.display()))
                .await
                .unwrap(),
        ),
        Some(url) => Db::Postgres(sqlx::PgPool::connect(url).await.unwrap()),
    };
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/api/openapi.json", kiln.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let global_security = doc.get("security").cloned().unwrap_or(Value::Null);

    // Positive controls: ann's own credentials reach her objects (so the refusals below
    // are about the credentials, not about ids that do not exist).
    for path in [
        format!("/api/projects/{}", ann.project),
        format!("/api/tasks/{}", ann.draft_task),
        format!("/api/sessions/{}", ann.session),
        format!("/api/nodes/{}", ann.node),
        format!("/api/workspaces/{}", ann.workspace),
    ] {
        ann.api.get(&path).await;
    }
    let control = http
        .get(format!(
            "{}/api/nodes/{}/commands?waitMs=0&after=999999",
            kiln.base, ann.node
        ))
        .bearer_auth(&ann_node_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        control.status(),
        200,
        "ann's node token works on ann's node"
    );

    let before = snapshot(&db).await;
    // The snapshot sees the worlds (a blind snapshot would make "unchanged" meaningless).
    for (table, at_least) in [
        ("projects", 2),
        ("tasks", 4),
        ("nodes", 2),
        ("chat_messages", 2),
    ] {
        let rows = before.get(table).map_or(0, Vec::len);
        assert!(rows >= at_least, "snapshot of {table}: {rows} rows");
    }
    let mut checked = 0usize;
    let mut operations = 0usize;
    let mut public = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let security = op.get("security").unwrap_or(&global_security);
            let schemes: Vec<&str> = security
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_object)
                        .flat_map(|o| o.keys().map(String::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if schemes.is_empty() {
                public.push(format!("{} {template}", method.to_uppercase()));
                continue;
            }
            let callback = schemes.contains(&"callbackToken");
            let params: Vec<&str> = template
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            // Every way to fill the path with ann's objects.
            let mut paths = vec![template.clone()];
            for p in &params {
                let values: Vec<&str> = match *p {
                    "projectId" => vec![&ann.project],
                    "taskId" => vec![&ann.draft_task, &ann.running_task],
                    "sessionId" => vec![&ann.session],
                    "nodeId" => vec![&ann.node],
                    "workspaceId" => vec![&ann.workspace],
                    "tokenId" => vec![&ann.token_id],
                    other => panic!("{template}: no value for path parameter {other}; add it"),
                };
                paths = paths
                    .iter()
                    .flat_map(|path| {
                        values
                            .iter()
                            .map(move |v| path.replace(&format!("{{{p}}}"), v))
                    })
                    .collect();
            }
            let body = op
                .get("requestBody")
                .map(|_| body_for(method, template, &ann, &bob));

            let mut cases = vec![
                Case {
                    name: "no token",
                    cred: Cred::None,
                    refused: &[401],
                },
                Case {
                    name: "garbage bearer",
                    cred: Cred::Bearer("not-a-token".into()),
                    refused: &[401],
                },
            ];
            if callback {
                let wrong_node = if template.starts_with("/api/workspaces") {
                    bob_ws_tok.clone()
                } else {
                    bob_node_tok.clone()
                };
                let (own, wrong_scope, own_node, own_ws) =
                    if template.starts_with("/api/workspaces") {
                        (
                            ann_ws_tok.clone(),
                            ann_node_tok.clone(),
                            Some(ann.node.as_str()),
                            Some(ann.workspace.as_str()),
                        )
                    } else {
                        (
                            ann_node_tok.clone(),
                            ann_ws_tok.clone(),
                            Some(ann.node.as_str()),
                            None,
                        )
                    };
                let expired = match own_ws {
                    Some(ws) => workspace_token(&signer, own_node.unwrap(), ws, past),
                    None => node_token(&signer, own_node.unwrap(), past),
                };
                let forged_claims = CallbackClaims {
                    scope: if own_ws.is_some() {
                        TokenScope::Workspace
                    } else {
                        TokenScope::Node
                    },
                    node: ann.node.parse().unwrap(),
                    workspace: own_ws.map(|w| w.parse().unwrap()),
                    iat: unix_now(),
                    exp: later,
                };
                cases.extend([
                    Case {
                        name: "wrong node's token",
                        cred: Cred::Bearer(wrong_node.clone()),
                        refused: &[403],
                    },
                    Case {
                        name: "expired token",
                        cred: Cred::Bearer(expired),
                        refused: &[401],
                    },
                    Case {
                        name: "tampered payload (bob's token claiming ann's node)",
                        cred: Cred::Bearer(swap_payload(&wrong_node, &forged_claims)),
                        refused: &[401],
                    },
                    Case {
                        name: "tampered signature",
                        cred: Cred::Bearer(flip(&own)),
                        refused: &[401],
                    },
                    Case {
                        name: "signed with another key",
                        cred: Cred::Bearer(other_key.sign(&forged_claims)),
                        refused: &[401],
                    },
                    Case {
                        name: "wrong token kind (scope)",
                        cred: Cred::Bearer(wrong_scope),
                        refused: &[403],
                    },
                    Case {
                        name: "a user's API token",
                        cred: Cred::Bearer(ann.token.clone()),
                        refused: &[401],
                    },
                    Case {
                        name: "wrong user's API token",
                        cred: Cred::Bearer(bob.token.clone()),
                        refused: &[401],
                    },
                ]);
            } else {
                cases.extend([
                    Case {
                        name: "expired API token",
                        cred: Cred::Bearer(expired_api.clone()),
                        refused: &[401],
                    },
                    Case {
                        name: "tampered API token",
                        cred: Cred::Bearer(flip(&ann.token)),
                        refused: &[401],
                    },
                    Case {
                        name: "tampered session cookie",
                        cred: Cred::Cookie(flip(&ann.token)),
                        refused: &[401],
                    },
                    Case {
                        name: "a node's callback token",
                        cred: Cred::Bearer(ann_node_tok.clone()),
                        refused: &[401],
                    },
                    Case {
                        name: "a workspace's callback token",
                        cred: Cred::Bearer(ann_ws_tok.clone()),
                        refused: &[401],
                    },
                ]);
                if !params.is_empty() {
                    cases.push(Case {
                        name: "wrong user",
                        cred: Cred::Bearer(bob.token.clone()),
                        refused: &[403, 404],
                    });
                }
            }

            for path in &paths {
                let query = if path.ends_with("/commands") {
                    "?waitMs=0"
                } else {
                    ""
                };
                for case in &cases {
                    let mut req = http.request(
                        method.to_uppercase().parse().unwrap(),
                        format!("{}{path}{query}", kiln.base),
                    );
                    req = match &case.cred {
                        Cred::None => req,
                        Cred::Bearer(t) => req.bearer_auth(t),
                        Cred::Cookie(c) => req.header("cookie", format!("kiln_session={c}")),
                    };
                    if let Some(b) = &body {
                        req = req.json(b);
                    }
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    let ctype = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let text = resp.text().await.unwrap();
                    let what = format!("{} {path} with {}", method.to_uppercase(), case.name);
                    assert!(
                        case.refused.contains(&status),
                        "{what}: expected one of {:?}, got {status} {text}",
                        case.refused
                    );
                    assert!(
                        ctype.starts_with("application/json"),
                        "{what}: content-type {ctype:?}"
                    );
                    let err: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
                    assert!(err["error"].is_string(), "{what}: no error code: {text}");
                    assert!(err["message"].is_string(), "{what}: no message: {text}");
                    let after = snapshot(&db).await;
                    assert_store_same(&before, &after, &what);
                    checked += 1;
                }
            }

            // Collection endpoints: bob's view holds nothing of ann's.
            if !callback && params.is_empty() && method == "get" {
                let view = bob.api.get(template).await.to_string();
                for id in [
                    &ann.project,
                    &ann.draft_task,
                    &ann.running_task,
                    &ann.session,
                    &ann.node,
                    &ann.workspace,
                    &ann.token_id,
                ] {
                    assert!(
                        !view.contains(id.as_str()),
                        "GET {template} as bob shows ann's {id}"
                    );
                }
            }
        }
    }
    println!(
        "authorization matrix: {operations} operations in the document, {} public ({}), \
         {checked} refused requests, store unchanged after each",
        public.len(),
        public.join(", ")
    );
    // The public operations are exactly the expected ones (a new public endpoint fails here).
    let mut expected_public = vec![
        "GET /login",
        "POST /api/logout",
        "GET /api/health",
        "GET /api/openapi.json",
        "GET /assets/{path}",
        "GET /",
    ];
    expected_public.sort_unstable();
    public.sort();
    assert_eq!(public, expected_public, "unexpected public operations");
    assert!(checked > 200, "the matrix ran ({checked} requests)");

    // The legitimate users still work afterwards, and nothing of bob's was touched either.
    assert_eq!(
        ann.api
            .get(&format!("/api/tasks/{}", ann.running_task))
            .await["status"],
        "in_progress"
    );
    assert_eq!(
        bob.api
            .get(&format!("/api/tasks/{}", bob.running_task))
            .await["status"],
        "in_progress"
    );
}

fn assert_store_same(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    for (table, rows) in before {
        let now = &after[table];
        if rows != now {
            let added: Vec<&String> = now.iter().filter(|r| !rows.contains(r)).collect();
            let removed: Vec<&String> = rows.iter().filter(|r| !now.contains(r)).collect();
            panic!("{what} changed table {table}: added {added:?}, removed {removed:?}");
        }
    }
    assert_eq!(before.len(), after.len(), "{what}: tables changed");
}

/// A well-formed body for each operation that takes one, aimed at ann's objects, so a
/// handler that forgot its check would really change something.
fn body_for(method: &str, template: &str, ann: &World, bob: &World) -> Value {
    let _ = bob;
    let msg_id = uuid::Uuid::now_v7().to_string();
    match (method, template) {
        ("post", "/api/tokens") => json!({"name": "stolen"}),
        ("put", "/api/account/hetzner-token") => json!({"token": "stolen-hetzner-token-0123"}),
        ("put", "/api/projects/{projectId}/git-token") => {
            json!({"token": "stolen-git-token-0123"})
        }
        ("post", "/api/projects") => json!({"name": "evil", "repositoryUrl": "/tmp/evil"}),
        ("patch", "/api/projects/{projectId}") => json!({"name": "stolen"}),
        ("post", "/api/projects/{projectId}/tasks") => {
            json!({"description": "evil", "runNow": true})
        }
        ("patch", "/api/tasks/{taskId}") => json!({"title": "stolen", "status": "ready"}),
        ("post", "/api/sessions/{sessionId}/prompt") => json!({"text": "evil"}),
        ("post", "/api/projects/{projectId}/sessions") => {
            json!({"prompt": "evil", "vmSize": "small"})
        }
        ("post", "/api/nodes/{nodeId}/hello") => {
            json!({"nodeId": ann.node, "version": "evil", "workspaces": []})
        }
        ("post", "/api/nodes/{nodeId}/heartbeat") => {
            json!({"nodeId": ann.node, "outbox": {}, "workspaces": []})
        }
        ("post", "/api/nodes/{nodeId}/events") => {
            json!({"type": "failed", "workspace_id": ann.workspace, "error": "evil"})
        }
        ("post", "/api/nodes/{nodeId}/deltas") => json!({"deltas": [{
            "workspaceId": ann.workspace, "sessionId": ann.session,
            "segmentId": msg_id, "text": "evil"}]}),
        ("post", "/api/workspaces/{workspaceId}/messages") => json!({"messages": [{
            "id": msg_id, "sessionId": ann.session, "role": "assistant",
            "content": "evil", "createdAt": "2026-01-01T00:00:00Z"}]}),
        _ => panic!("{method} {template} takes a body: add one to body_for"),
    }
}
