//! The server answers health and maps unknown RPCs to Connect errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion
mod common;

#[tokio::test]
async fn health_and_unknown_rpc() {
    let e = common::TestEnvd::start().await;
    let res = e
        .http
        .get(format!("{}/health", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(res.headers()["x-envd-version"], envd::ENVD_VERSION);
    let (status, body) = e.unary("process.Process/Nope", serde_json::json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "unimplemented");
}

#[tokio::test]
async fn bad_json_is_invalid_argument_and_server_keeps_serving() {
    let e = common::TestEnvd::start().await;
    let res = e
        .http
        .post(format!("{}/filesystem.Filesystem/Stat", e.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_argument");
    assert_eq!(e.health().await, 204);
}

#[tokio::test]
async fn access_token_is_enforced_after_init() {
    let e = common::TestEnvd::start().await;
    let res = e
        .http
        .post(format!("{}/init", e.base))
        .json(&serde_json::json!({"accessToken": "tok", "envVars": {"A": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = e.http.get(format!("{}/envs", e.base)).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], 401);
    assert_eq!(body["message"], envd::auth::UNAUTHORIZED);
    let res = e
        .http
        .get(format!("{}/envs", e.base))
        .header("x-access-token", "tok")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["A"], "1");
    // health stays open
    assert_eq!(e.health().await, 204);
}

#[tokio::test]
async fn malformed_envelope_is_an_error_and_server_keeps_serving() {
    let e = common::TestEnvd::start().await;
    // Declares 100 bytes, carries 3.
    let mut body = vec![0u8, 0, 0, 0, 100];
    body.extend_from_slice(b"{}}");
    let res = e
        .http
        .post(format!("{}/process.Process/Start", e.base))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        status >= 400 || text.contains("\"error\""),
        "a truncated envelope must fail: {status} {text}"
    );
    assert!(!text.contains("\"start\""), "no process may start: {text}");
    assert_eq!(e.health().await, 204);
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let e = common::TestEnvd::start().await;
    let huge = "a".repeat(envd::rpc::MAX_MESSAGE_BYTES + 1024);
    let (status, body) = e
        .unary(
            "filesystem.Filesystem/Stat",
            serde_json::json!({ "path": huge }),
        )
        .await;
    assert!(
        status == 429 || status == 413 || status == 400,
        "status {status}: {body}"
    );
    assert_eq!(e.health().await, 204);
}

#[tokio::test]
async fn unknown_content_type_is_rejected() {
    let e = common::TestEnvd::start().await;
    let res = e
        .http
        .post(format!("{}/process.Process/List", e.base))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
}

#[tokio::test]
async fn h2c_prior_knowledge_serves_rpcs_too() {
    let e = common::TestEnvd::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2
        .post(format!("{}/process.Process/List", e.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.text().await.unwrap(), "{}");
}
