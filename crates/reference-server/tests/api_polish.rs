//! Error answers that did not match the rest of the API: query strings answered with axum's
//! raw text, a `null` for a project's name taken as "unchanged", and a malformed token id
//! answered 400 where every other malformed id is a 404.

mod common;

use common::{TestServer, error_code};
use serde_json::{Value, json};

/// A query parameter that does not fit was answered "Failed to deserialize query string:
/// limit: invalid digit found in string". It is a 400 naming the parameter, what it takes
/// and what it got.
#[tokio::test]
async fn a_query_parameter_that_does_not_fit_is_named_with_what_it_takes() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let task = s.task(&token, &project, false).await;
    let sessions = format!("/api/projects/{}/sessions", project.id);
    let messages = format!("/api/sessions/{}/messages", task.session_id.unwrap());

    let cases = [
        (
            format!("{sessions}?limit=abc"),
            "limit must be a whole number (got \"abc\")",
        ),
        (
            format!("{sessions}?limit=-1"),
            "limit must be a whole number (got \"-1\")",
        ),
        (
            format!("{sessions}?limit=99999999999"),
            "limit is too large (got \"99999999999\")",
        ),
        (
            format!("{messages}?before=yesterday&limit=5"),
            "before must be a whole number (got \"yesterday\")",
        ),
        (
            format!("/api/projects/{}/tasks?colour=red", project.id),
            "unknown field colour; the fields are: status",
        ),
    ];
    for (path, want) in cases {
        let r = s.http.get(s.url(&path)).bearer_auth(&token).send().await;
        let (status, body) = error_code(r.unwrap()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}");
        assert_eq!(body["message"], want, "{path}");
    }
}

/// `PATCH /api/projects/{id}` with `{"name": null}` answered 200, kept the name and moved
/// `updatedAt`. A `null` for a field every project has is a 422 naming it; the project is
/// left as it was, and an absent field still means "unchanged".
#[tokio::test]
async fn a_null_for_a_project_field_is_refused_and_an_absent_one_is_unchanged() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let project = s.project(&token).await;
    let path = format!("/api/projects/{}", project.id);
    let patch = |body: Value| s.http.patch(s.url(&path)).bearer_auth(&token).json(&body);
    let before: Value = s
        .http
        .get(s.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    for field in ["name", "repositoryUrl", "defaultVmSize", "provider"] {
        let (status, body) = error_code(patch(json!({ field: null })).send().await.unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("invalid_body")),
            "{field}: {body}"
        );
        assert_eq!(
            body["message"],
            format!("{field}: must not be null (leave it out to keep it unchanged)")
        );
    }
    let (status, body) = error_code(patch(json!({"name": 5})).send().await.unwrap()).await;
    assert_eq!(status, 422);
    assert_eq!(body["message"], "name must be a string (got a number)");

    let after: Value = s
        .http
        .get(s.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, before, "a refused PATCH changes nothing");

    let r = patch(json!({"repositoryUrl": "https://example.com/other.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let renamed: Value = r.json().await.unwrap();
    assert_eq!(renamed["name"], before["name"]);
    assert_eq!(renamed["defaultVmSize"], before["defaultVmSize"]);
    assert_eq!(renamed["provider"], before["provider"]);
    assert_eq!(renamed["repositoryUrl"], "https://example.com/other.git");
}

/// `DELETE /api/tokens/not-a-uuid` was a 400 where a malformed project, task or node id is a
/// 404; it is a 404 `not_found` too, like an unknown or another user's token.
#[tokio::test]
async fn a_malformed_token_id_is_not_found_like_other_malformed_ids() {
    let s = TestServer::start().await;
    let (_, token) = s.user("ann").await;
    let delete = |path: &str| s.http.delete(s.url(path)).bearer_auth(&token).send();

    let (status, body) = error_code(delete("/api/tokens/not-a-uuid").await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(body["message"], "token not found");
    let unknown = format!("/api/tokens/{}", uuid::Uuid::nil());
    let (status, unknown_body) = error_code(delete(&unknown).await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(unknown_body, body, "malformed and unknown ids answer alike");
    let (status, _) = error_code(delete("/api/projects/not-a-uuid").await.unwrap()).await;
    assert_eq!(status, 404);
}
