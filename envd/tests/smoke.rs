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

/// A refused request whose body is still arriving gets its 401 and the
/// connection stays usable: envd reads the rest of the body before answering
/// (hyper would otherwise close the socket under the writing client, which
/// then sees a broken pipe or a reset instead of the 401).
#[tokio::test]
async fn a_refusal_waits_for_the_body_and_keeps_the_connection() {
    let e = common::TestEnvd::start().await;
    let res = e
        .http
        .post(format!("{}/init", e.base))
        .json(&serde_json::json!({"accessToken": "tok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    // An RPC refused by the token check, and an upload refused by /files' own.
    for (target, content_type) in [
        ("/process.Process/List", "application/json"),
        ("/files?path=/tmp/refused", "application/octet-stream"),
    ] {
        let text = slow_post_then_health(&e.base, target, content_type).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{target}: {text}");
        assert!(text.contains("\"code\":401"), "{target}: {text}");
    }
}

/// Sends a POST whose body's second half comes late, then `GET /health` on
/// the same connection; returns everything read up to the health answer.
async fn slow_post_then_health(base: &str, target: &str, content_type: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let half = vec![b'x'; 32 * 1024];
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        2 * half.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&half).await.unwrap();
    // The client is slow: the second half comes after envd has decided.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    conn.write_all(&half)
        .await
        .expect("envd still reads the body");
    conn.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("HTTP/1.1 204") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .expect("both answers within 10 s")
            .expect("the connection stays open");
        assert!(
            n > 0,
            "envd closed the connection: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}
