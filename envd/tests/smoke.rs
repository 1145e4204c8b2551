//! The server answers health and maps unknown RPCs to Connect errors.
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
    let res = e
        .http
        .get(format!("{}/health", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
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
    let res = e
        .http
        .get(format!("{}/health", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
}
