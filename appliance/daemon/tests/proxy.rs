//! The shared listener and sandbox proxy over real sockets: a real proxy
//! on 127.0.0.1, real hyper/axum "guests" behind a test `Dialer`, and a
//! `Directory` backed by a map the tests edit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::routing::{any, get, post};
use envd_protocol::signing::{Operation, signature};
use futures_util::StreamExt as _;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use lelantos::proxy::{DialFuture, Dialer, Directory, Proxy, Upstream, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Bound on every wait, so a broken proxy fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(3);

const DOMAIN: &str = "sbx.test";
const ENVD: u16 = 49983;

// ---- the directory and dialer the proxy sees ----

#[derive(Default)]
struct TestDirectory {
    sandboxes: Mutex<HashMap<String, (Upstream, Option<String>)>>,
}

impl Directory for TestDirectory {
    fn upstream(&self, sandbox_id: &str) -> Option<Upstream> {
        let map = self.sandboxes.lock().unwrap();
        map.get(sandbox_id).map(|(u, _)| u.clone())
    }

    fn signing_keys(&self) -> Vec<(String, String)> {
        let map = self.sandboxes.lock().unwrap();
        map.iter()
            .filter_map(|(id, (_, tok))| tok.clone().map(|t| (id.clone(), t)))
            .collect()
    }
}

/// Guest port → where the test guest for it listens.
struct PortMap(HashMap<u16, SocketAddr>);

impl Dialer for PortMap {
    fn dial(&self, port: u16) -> DialFuture {
        let addr = self.0.get(&port).copied();
        Box::pin(async move {
            match addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
            }
        })
    }
}

// ---- test guests ----

#[derive(Clone, Copy)]
struct ConnId(usize);

#[derive(Clone)]
struct GuestState {
    name: &'static str,
    release: CancellationToken,
}

/// A guest HTTP server with its own accept loop, so it can number its
/// connections.
struct Guest {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Lets `/stream` send its last chunk.
    release: CancellationToken,
}

async fn spawn_guest(name: &'static str) -> Guest {
    let release = CancellationToken::new();
    let state = GuestState {
        name,
        release: release.clone(),
    };
    let router = Router::new()
        .route("/echo", any(echo))
        .route("/stream", get(stream))
        .route("/echo-stream", post(echo_stream))
        .route("/ws", get(upgrade))
        .route("/files", any(files))
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let id = ConnId(counter.fetch_add(1, Ordering::SeqCst) + 1);
            let router = router.clone();
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(id);
                    router.clone().oneshot(req)
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades(),
            );
        }
    });
    Guest {
        addr,
        accepted,
        release,
    }
}

async fn echo(
    State(s): State<GuestState>,
    Extension(ConnId(conn)): Extension<ConnId>,
    req: Request,
) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let body = body.collect().await.unwrap().to_bytes();
    axum::Json(json!({
        "guest": s.name,
        "conn": conn,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// One chunk at once, the next only when the test releases it.
async fn stream(State(s): State<GuestState>) -> Body {
    let first = futures_util::stream::once(async { Ok::<_, io::Error>(Bytes::from("first\n")) });
    let last = futures_util::stream::once(async move {
        s.release.cancelled().await;
        Ok(Bytes::from("last\n"))
    });
    Body::from_stream(first.chain(last))
}

/// Sends each request chunk back as soon as it arrives.
async fn echo_stream(req: Request) -> Body {
    Body::from_stream(req.into_body().into_data_stream())
}

/// Answers 101 and echoes whatever comes through the tunnel.
async fn upgrade(mut req: Request) -> http::Response<Body> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let mut io = TokioIo::new(on.await.unwrap());
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    http::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::empty())
        .unwrap()
}

async fn files(State(s): State<GuestState>, req: Request) -> String {
    format!("{} files {}", s.name, req.uri())
}

// ---- the proxy under test ----

struct Harness {
    addr: SocketAddr,
    directory: Arc<TestDirectory>,
    shutdown: CancellationToken,
    server: JoinHandle<io::Result<()>>,
}

async fn start() -> Harness {
    let directory = Arc::new(TestDirectory::default());
    let api = Router::new()
        .route("/health", get(|| async { "api health" }))
        .route("/files", get(|| async { "api files" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(directory.clone(), DOMAIN.to_owned());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        api,
        proxy,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    Harness {
        addr,
        directory,
        shutdown,
        server,
    }
}

/// A proxy with one sandbox `id` (epoch 1, no token) whose envd port is a
/// fresh test guest; the guest lives as long as the returned handle.
async fn start_with_envd(id: &str) -> (Harness, Guest) {
    let h = start().await;
    let envd = spawn_guest("envd").await;
    h.add(id, 1, &[(ENVD, envd.addr)], None);
    (h, envd)
}

impl Harness {
    /// Registers a running sandbox; returns its `gone` token.
    fn add(
        &self,
        id: &str,
        epoch: u64,
        ports: &[(u16, SocketAddr)],
        token: Option<&str>,
    ) -> CancellationToken {
        let gone = CancellationToken::new();
        let upstream = Upstream {
            sandbox_id: id.to_owned(),
            epoch,
            dialer: Arc::new(PortMap(ports.iter().copied().collect())),
            gone: gone.clone(),
        };
        self.directory
            .sandboxes
            .lock()
            .unwrap()
            .insert(id.to_owned(), (upstream, token.map(str::to_owned)));
        gone
    }

    /// What the sandbox owner does on kill: stop listing it, then cancel.
    fn kill(&self, id: &str, gone: &CancellationToken) {
        self.directory.sandboxes.lock().unwrap().remove(id);
        gone.cancel();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

// ---- clients ----

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive client connection.
async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn send_on(
    sender: &mut Sender,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let fut = async {
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("reply in time")
}

/// One request on a fresh connection, with `Host` set to the proxy address
/// unless given.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let host = addr.to_string();
    let mut all = headers.to_vec();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        all.push(("host", &host));
    }
    send_on(&mut connect(addr).await, method, path, &all, body).await
}

/// Reads from a raw socket until `needle` has arrived; returns all bytes read.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let fut = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}; got {:?}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| {
        panic!(
            "{needle:?} never arrived; got {:?}",
            String::from_utf8_lossy(seen)
        )
    });
}

/// Reads until the connection ends; returns how it ended.
async fn read_to_end(stream: &mut TcpStream) -> io::Result<()> {
    let fut = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("connection ends in time")
}

fn not_found_body(id: &str) -> Value {
    json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502})
}

// ---- tests ----

#[tokio::test]
async fn requests_without_routing_go_to_the_api() {
    let h = start().await;
    let guest = spawn_guest("s1").await;
    h.add("s1", 1, &[(ENVD, guest.addr)], None);

    let r = send(h.addr, "GET", "/health", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "api health");
    // `/files` without a signature is not a signed URL.
    let r = send(h.addr, "GET", "/files?path=%2Fx", &[], "").await;
    assert_eq!(r.body, "api files");
    // A host name under another domain is not a sandbox host.
    let r = send(
        h.addr,
        "GET",
        "/health",
        &[("host", "49983-s1.other.test")],
        "",
    )
    .await;
    assert_eq!(r.body, "api health");
    assert_eq!(guest.accepted.load(Ordering::SeqCst), 0);
    h.stop().await;
}

#[tokio::test]
async fn routes_by_header_and_by_host_name() {
    let h = start().await;
    let envd = spawn_guest("envd").await;
    let app = spawn_guest("app").await;
    h.add("s1", 1, &[(ENVD, envd.addr), (8080, app.addr)], None);

    let r = send(
        h.addr,
        "POST",
        "/echo?x=1&y=%2F",
        &[
            ("e2b-sandbox-id", "s1"),
            ("e2b-sandbox-port", "49983"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-end-to-end", "kept"),
        ],
        "payload",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["guest"], "envd");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "/echo?x=1&y=%2F");
    assert_eq!(v["body"], "payload");
    let sent = &v["headers"];
    assert_eq!(sent["host"], h.addr.to_string());
    assert_eq!(sent["x-end-to-end"], "kept");
    assert_eq!(sent["e2b-sandbox-id"], "s1");
    for hop in ["x-hop", "proxy-authorization", "keep-alive"] {
        assert!(sent.get(hop).is_none(), "{hop} forwarded: {sent}");
    }

    let r = send(h.addr, "GET", "/echo", &[("host", "8080-s1.sbx.test")], "").await;
    assert_eq!(r.json()["guest"], "app");
    assert_eq!(r.json()["headers"]["host"], "8080-s1.sbx.test");
    let r = send(
        h.addr,
        "GET",
        "/echo",
        &[("host", "49983-s1.sbx.test:3000")],
        "",
    )
    .await;
    assert_eq!(r.json()["guest"], "envd");
    h.stop().await;
}

#[tokio::test]
async fn unknown_sandbox_closed_port_and_bad_port() {
    let (h, _envd) = start_with_envd("s1").await;

    let r = send(h.addr, "GET", "/health", &[("e2b-sandbox-id", "nope")], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), not_found_body("nope"));
    let r = send(h.addr, "GET", "/", &[("host", "8080-nope.sbx.test")], "").await;
    assert_eq!(r.json(), not_found_body("nope"));

    let r = send(h.addr, "GET", "/", &[("host", "1234-s1.sbx.test")], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.json(),
        json!({"sandboxId": "s1", "message": "The sandbox is running but port is not open", "port": 1234, "code": 502})
    );

    let r = send(
        h.addr,
        "GET",
        "/health",
        &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", "http")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json();
    assert_eq!(v["code"], 400);
    assert!(v["message"].as_str().unwrap().contains("http"), "{v}");
    h.stop().await;
}

#[tokio::test]
async fn chunked_request_and_response_stream_through() {
    let (h, _envd) = start_with_envd("s1").await;

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"POST /echo-stream HTTP/1.1\r\nhost: 127.0.0.1\r\ne2b-sandbox-id: s1\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    // The guest echoes the first chunk while the request body is still
    // open: neither direction is buffered to completion.
    read_until(&mut c, &mut seen, "hello").await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    c.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    read_until(&mut c, &mut seen, " world").await;
    read_until(&mut c, &mut seen, "0\r\n\r\n").await;
    h.stop().await;
}

#[tokio::test]
async fn first_chunk_arrives_before_the_stream_ends() {
    let (h, envd) = start_with_envd("s1").await;

    let mut sender = connect(h.addr).await;
    let req = http::Request::get("/stream")
        .header("host", "127.0.0.1")
        .header("e2b-sandbox-id", "s1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk before the guest finishes")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    assert!(!envd.release.is_cancelled());
    envd.release.cancel();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "last\n");
    h.stop().await;
}

#[tokio::test]
async fn upgrade_becomes_a_tunnel() {
    let h = start().await;
    let envd = spawn_guest("envd").await;
    let gone = h.add("s1", 1, &[(ENVD, envd.addr)], None);

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\ne2b-sandbox-id: s1\r\n\
          connection: Upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    read_until(&mut c, &mut seen, "\r\n\r\n").await;
    let head = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    c.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = Vec::new();
    read_until(&mut c, &mut echoed, "ping through the tunnel").await;

    // A tunnel is in flight too: killing the sandbox resets it.
    h.kill("s1", &gone);
    let err = read_to_end(&mut c).await.expect_err("tunnel reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    h.stop().await;
}

#[tokio::test]
async fn gone_resets_in_flight_connections_only() {
    let h = start().await;
    let envd = spawn_guest("envd").await;
    let gone = h.add("s1", 1, &[(ENVD, envd.addr)], None);

    // An idle keep-alive connection that talked to s1 earlier.
    let mut idle = connect(h.addr).await;
    let hdrs = [("host", "127.0.0.1"), ("e2b-sandbox-id", "s1")];
    let r = send_on(&mut idle, "GET", "/health", &hdrs, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: 127.0.0.1\r\ne2b-sandbox-id: s1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut c, &mut seen, "first").await;

    h.kill("s1", &gone);
    let err = read_to_end(&mut c)
        .await
        .expect_err("an RST, not a clean end");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

    // The idle connection survives and now hears the sandbox is gone.
    let r = send_on(&mut idle, "GET", "/health", &hdrs, "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json(), not_found_body("s1"));
    let r = send(h.addr, "GET", "/health", &[("e2b-sandbox-id", "s1")], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json(), not_found_body("s1"));
    h.stop().await;
}

#[tokio::test]
async fn signed_files_urls_route_by_signature() {
    let h = start().await;
    let a = spawn_guest("a").await;
    let b = spawn_guest("b").await;
    h.add("sa", 1, &[(ENVD, a.addr)], Some("token-a"));
    h.add("sb", 1, &[(ENVD, b.addr)], Some("token-b"));

    let path = "/home/user/a b+c.txt";
    // As the SDKs build the URL: every value form-encoded (signatures are
    // base64 and may hold `+` and `/`).
    let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let encoded = encode(path);
    let sig = encode(&signature(path, Operation::Read, "", "token-b", None));
    let url = format!("/files?path={encoded}&signature={sig}");
    let r = send(h.addr, "GET", &url, &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, format!("b files {url}"));

    // Username and expiration take part, and writes sign as `write`.
    let sig = encode(&signature(
        path,
        Operation::Write,
        "root",
        "token-a",
        Some(1_900_000_000),
    ));
    let url = format!(
        "/files?path={encoded}&username=root&signature={sig}&signature_expiration=1900000000"
    );
    let r = send(h.addr, "POST", &url, &[], "data").await;
    assert_eq!(r.body, format!("a files {url}"));
    let r = send(h.addr, "GET", &url, &[], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);

    let bad = encode(&signature(path, Operation::Read, "", "token-c", None));
    let r = send(
        h.addr,
        "GET",
        &format!("/files?path={encoded}&signature={bad}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), not_found_body(""));
    h.stop().await;
}

#[tokio::test]
async fn new_epoch_never_reuses_pooled_connections() {
    let (h, envd) = start_with_envd("s1").await;
    let hdrs = [("e2b-sandbox-id", "s1")];
    let conn_of = |r: Reply| r.json()["conn"].as_u64().unwrap();

    // Until the pool is seen reusing a connection within epoch 1.
    let mut used = vec![conn_of(send(h.addr, "GET", "/echo", &hdrs, "").await)];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = conn_of(send(h.addr, "GET", "/echo", &hdrs, "").await);
        if used.contains(&c) {
            break;
        }
        used.push(c);
        assert!(tokio::time::Instant::now() < deadline, "pool never reused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Same sandbox, same guest address, next serving period.
    h.add("s1", 2, &[(ENVD, envd.addr)], None);
    let c = conn_of(send(h.addr, "GET", "/echo", &hdrs, "").await);
    assert!(
        !used.contains(&c),
        "epoch 2 reused connection {c} of {used:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_grace_then_closes() {
    let (h, _envd) = start_with_envd("s1").await;

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: 127.0.0.1\r\ne2b-sandbox-id: s1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut c, &mut seen, "first").await;
    let addr = h.addr;
    // The grace is 1 s; the stream never ends by itself.
    h.stop().await;
    read_to_end(&mut c).await.ok();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}
