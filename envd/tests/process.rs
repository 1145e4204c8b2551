//! process.Process over a real loopback socket: event order, exit status
//! wording, stdin, reattach, signals, deadlines, PTYs and client streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion
mod common;

use base64::Engine as _;
use common::{Frame, TestEnvd, envelope};
use serde_json::{Value, json};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn decode_output(frames: &[Frame], key: &str) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Msg(v) => v["event"]["data"][key].as_str().map(str::to_owned),
            Frame::End(_) => None,
        })
        .map(|s| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
        })
        .collect()
}

fn end_of(frames: &[Frame]) -> Value {
    frames
        .iter()
        .find_map(|f| match f {
            Frame::Msg(v) if v["event"].get("end").is_some() => Some(v["event"]["end"].clone()),
            _ => None,
        })
        .expect("an end event")
}

/// Reads the `start` event that must open every process stream.
async fn start_pid(s: &mut common::Stream) -> u64 {
    let Some(Frame::Msg(start)) = s.next().await else {
        panic!("a start event first")
    };
    start["event"]["start"]["pid"]
        .as_u64()
        .expect("start carries a pid")
}

/// Sends a signal by pid; returns the HTTP status.
async fn signal(e: &TestEnvd, pid: u64, sig: &str) -> u16 {
    let (status, _) = e
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": sig}),
        )
        .await;
    status
}

fn bash(cmd: &str) -> Value {
    json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": false})
}

#[tokio::test]
async fn start_streams_start_output_end_then_eos() {
    let e = TestEnvd::start().await;
    let frames = e
        .stream(
            "process.Process/Start",
            bash("echo out; echo err >&2; exit 3"),
            &[],
        )
        .await
        .collect()
        .await;
    let Frame::Msg(first) = &frames[0] else {
        panic!("first frame must be a message")
    };
    assert!(
        first["event"]["start"]["pid"].as_u64().unwrap() > 0,
        "start first: {first}"
    );
    assert_eq!(decode_output(&frames, "stdout"), "out\n");
    assert_eq!(decode_output(&frames, "stderr"), "err\n");
    let end = end_of(&frames);
    assert_eq!(end["exitCode"], 3);
    assert_eq!(end["exited"], true);
    assert_eq!(end["status"], "exit status 3");
    assert_eq!(end["error"], "exit status 3");
    assert_eq!(frames.last(), Some(&Frame::End(json!({}))));
}

#[tokio::test]
async fn success_omits_exit_code_and_error() {
    let e = TestEnvd::start().await;
    let frames = e
        .stream("process.Process/Start", bash("true"), &[])
        .await
        .collect()
        .await;
    let end = end_of(&frames);
    assert!(
        end.get("exitCode").is_none() && end.get("error").is_none(),
        "{end}"
    );
    assert_eq!(end["status"], "exit status 0");
}

#[tokio::test]
async fn envs_cwd_and_sandbox_env_reach_the_process() {
    let e = TestEnvd::start().await;
    e.sandbox.update(|s| {
        s.env_vars.insert("FROM_INIT".into(), "yes".into());
    });
    let dir = e.dir.path().display().to_string();
    let req = json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo $FOO $FROM_INIT $E2B_SANDBOX; pwd"],
        "envs": {"FOO": "bar"}, "cwd": dir}});
    let frames = e
        .stream("process.Process/Start", req, &[])
        .await
        .collect()
        .await;
    let canonical = std::fs::canonicalize(e.dir.path()).unwrap();
    assert_eq!(
        decode_output(&frames, "stdout"),
        format!("bar yes true\n{}\n", canonical.display())
    );
}

#[tokio::test]
async fn bad_cwd_and_unknown_user_are_stream_errors() {
    let e = TestEnvd::start().await;
    let req = json!({"process": {"cmd": "/bin/true", "cwd": "/definitely/not/here"}});
    let frames = e
        .stream("process.Process/Start", req, &[])
        .await
        .collect()
        .await;
    assert_eq!(frames.len(), 1);
    let Frame::End(eos) = &frames[0] else {
        panic!("expected EOS")
    };
    assert_eq!(eos["error"]["code"], "invalid_argument");
    assert_eq!(
        eos["error"]["message"],
        "cwd '/definitely/not/here' does not exist"
    );

    // "nosuchuser:" in Basic auth
    let frames = e
        .stream(
            "process.Process/Start",
            bash("true"),
            &[("authorization", "Basic bm9zdWNodXNlcjo=")],
        )
        .await
        .collect()
        .await;
    let Frame::End(eos) = &frames[0] else {
        panic!("expected EOS")
    };
    assert_eq!(eos["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn stdin_send_and_close() {
    let e = TestEnvd::start().await;
    let req = json!({"process": {"cmd": "/bin/cat"}});
    let mut s = e.stream("process.Process/Start", req, &[]).await;
    let pid = start_pid(&mut s).await;
    let (st, _) = e
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": b64("ping\n")}}),
        )
        .await;
    assert_eq!(st, 200);
    let Some(Frame::Msg(data)) = s.next().await else {
        panic!("data")
    };
    assert_eq!(data["event"]["data"]["stdout"], b64("ping\n"));
    let (st, _) = e
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
        )
        .await;
    assert_eq!(st, 200);
    // idempotent
    let (st, _) = e
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
        )
        .await;
    assert_eq!(st, 200);
    let rest = s.collect().await;
    assert_eq!(end_of(&rest)["status"], "exit status 0");
}

#[tokio::test]
async fn stdin_false_means_dev_null_and_input_is_refused() {
    let e = TestEnvd::start().await;
    let mut s = e
        .stream(
            "process.Process/Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["5"]}, "stdin": false}),
            &[],
        )
        .await;
    let pid = start_pid(&mut s).await;
    let (st, body) = e
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": b64("x")}}),
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (500, Some("internal")));
    assert_eq!(signal(&e, pid, "SIGNAL_SIGKILL").await, 200);
}

#[tokio::test]
async fn disconnect_keeps_process_and_connect_reattaches() {
    let e = TestEnvd::start().await;
    let marker = e.path("marker");
    let cmd =
        format!("for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.2; echo tick$i; done; touch {marker}");
    let mut s = e.stream("process.Process/Start", bash(&cmd), &[]).await;
    let pid = start_pid(&mut s).await;
    drop(s); // client goes away

    let (_, list) = e.unary("process.Process/List", json!({})).await;
    let pids: Vec<u64> = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.contains(&pid), "still listed after disconnect: {list}");

    let frames = e
        .stream(
            "process.Process/Connect",
            json!({"process": {"pid": pid}}),
            &[],
        )
        .await
        .collect()
        .await;
    let Frame::Msg(first) = &frames[0] else {
        panic!("start first")
    };
    assert_eq!(first["event"]["start"]["pid"].as_u64(), Some(pid));
    assert!(decode_output(&frames, "stdout").contains("tick10"));
    assert_eq!(end_of(&frames)["status"], "exit status 0");
    assert!(
        std::path::Path::new(&marker).exists(),
        "process ran to completion"
    );

    // A late Connect still gets start + end; List no longer shows it.
    let frames = e
        .stream(
            "process.Process/Connect",
            json!({"process": {"pid": pid}}),
            &[],
        )
        .await
        .collect()
        .await;
    assert_eq!(end_of(&frames)["status"], "exit status 0");
    let (_, list) = e.unary("process.Process/List", json!({})).await;
    assert!(list.get("processes").is_none_or(|p| {
        p.as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"].as_u64() != Some(pid))
    }));
}

#[tokio::test]
async fn sigkill_ends_stream_with_signal_status_and_unknown_pid_is_not_found() {
    let e = TestEnvd::start().await;
    let mut s = e
        .stream("process.Process/Start", bash("sleep 30; echo never"), &[])
        .await;
    let pid = start_pid(&mut s).await;
    assert_eq!(signal(&e, pid, "SIGNAL_SIGKILL").await, 200);
    let end = end_of(&s.collect().await);
    assert_eq!(end["exitCode"], -1);
    assert_eq!(end["status"], "signal: killed");
    assert_eq!(end["error"], "signal: killed");
    assert!(end.get("exited").is_none());

    let (st, body) = e
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": 999_999}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (404, Some("not_found")));
    let (st, body) = e
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_UNSPECIFIED"}),
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (501, Some("unimplemented")));
}

#[tokio::test]
async fn timeout_header_kills_the_process_and_ends_with_deadline_exceeded() {
    let e = TestEnvd::start().await;
    let marker = e.path("survived");
    let mut s = e
        .stream(
            "process.Process/Start",
            bash(&format!("sleep 3; touch {marker}")),
            &[("connect-timeout-ms", "500")],
        )
        .await;
    let pid = start_pid(&mut s).await;
    let rest = s.collect().await;
    let Some(Frame::End(eos)) = rest.last() else {
        panic!("EOS")
    };
    assert_eq!(eos["error"]["code"], "deadline_exceeded");
    // The process was killed: a Connect sees its end with a signal.
    let frames = e
        .stream(
            "process.Process/Connect",
            json!({"process": {"pid": pid}}),
            &[],
        )
        .await
        .collect()
        .await;
    assert_eq!(end_of(&frames)["status"], "signal: killed");
    assert!(!std::path::Path::new(&marker).exists());
}

#[tokio::test]
async fn zero_timeout_means_no_deadline() {
    let e = TestEnvd::start().await;
    let frames = e
        .stream(
            "process.Process/Start",
            bash("sleep 0.3; echo done"),
            &[("connect-timeout-ms", "0")],
        )
        .await
        .collect()
        .await;
    assert_eq!(decode_output(&frames, "stdout"), "done\n");
}

#[tokio::test]
async fn keepalives_follow_start_on_quiet_streams() {
    let e = TestEnvd::start().await;
    let frames = e
        .stream(
            "process.Process/Start",
            bash("sleep 2.2"),
            &[("keepalive-ping-interval", "1")],
        )
        .await
        .collect()
        .await;
    let Frame::Msg(first) = &frames[0] else {
        panic!()
    };
    assert!(first["event"].get("start").is_some());
    let keepalives = frames
        .iter()
        .filter(|f| matches!(f, Frame::Msg(v) if v["event"].get("keepalive").is_some()))
        .count();
    assert!(keepalives >= 2, "got {keepalives} keepalives");
}

#[tokio::test]
async fn pty_runs_under_a_terminal_and_resizes() {
    let e = TestEnvd::start().await;
    let req = json!({"process": {"cmd": "/bin/bash", "args": ["-i"], "envs": {"TERM": "xterm", "PS1": "$ "}},
        "pty": {"size": {"cols": 80, "rows": 24}}});
    let mut s = e.stream("process.Process/Start", req, &[]).await;
    let pid = start_pid(&mut s).await;
    let (st, _) = e
        .unary(
            "process.Process/Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = e
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"pty": b64("stty size; exit 7\n")}}),
        )
        .await;
    assert_eq!(st, 200);
    // stdin input to a pty process is refused; close_stdin is `unknown`
    let (st, _) = e
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": b64("x")}}),
        )
        .await;
    assert_eq!(st, 500);
    let frames = s.collect().await;
    let out = decode_output(&frames, "pty");
    assert!(out.contains("40 120"), "pty output: {out:?}");
    assert_eq!(end_of(&frames)["exitCode"], 7);
}

#[tokio::test]
async fn resize_of_non_pty_is_internal() {
    let e = TestEnvd::start().await;
    let mut s = e
        .stream("process.Process/Start", bash("sleep 5"), &[])
        .await;
    let pid = start_pid(&mut s).await;
    let (st, body) = e
        .unary(
            "process.Process/Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 1, "rows": 1}}}),
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (500, Some("internal")));
    let (st, body) = e
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    e.unary(
        "process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
    )
    .await;
    let end = end_of(&s.collect().await);
    assert_eq!(end["status"], "signal: terminated");
}

#[tokio::test]
async fn tag_selects_and_lists() {
    let e = TestEnvd::start().await;
    let req = json!({"process": {"cmd": "/bin/sleep", "args": ["5"]}, "tag": "web"});
    let mut s = e.stream("process.Process/Start", req, &[]).await;
    let Some(Frame::Msg(_)) = s.next().await else {
        panic!("start")
    };
    let (_, list) = e.unary("process.Process/List", json!({})).await;
    let p = &list["processes"][0];
    assert_eq!(p["tag"], "web");
    assert_eq!(p["config"]["cmd"], "/bin/sleep");
    assert_eq!(p["config"]["args"], json!(["5"]));
    let (st, _) = e
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"tag": "web"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(end_of(&s.collect().await)["status"], "signal: killed");
}

#[tokio::test]
async fn stream_input_feeds_stdin() {
    let e = TestEnvd::start().await;
    let mut s = e
        .stream(
            "process.Process/Start",
            json!({"process": {"cmd": "/bin/cat"}}),
            &[],
        )
        .await;
    let pid = start_pid(&mut s).await;
    let mut body = envelope(
        0,
        json!({"start": {"process": {"pid": pid}}})
            .to_string()
            .as_bytes(),
    );
    body.extend(envelope(
        0,
        json!({"data": {"input": {"stdin": b64("streamed\n")}}})
            .to_string()
            .as_bytes(),
    ));
    body.extend(envelope(0, json!({"keepalive": {}}).to_string().as_bytes()));
    let res = e
        .http
        .post(format!("{}/process.Process/StreamInput", e.base))
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let bytes = res.bytes().await.unwrap();
    // One empty response message, then a successful end of stream.
    let msg = envelope(0, b"{}");
    let eos = envelope(2, b"{}");
    assert_eq!(bytes.to_vec(), [msg, eos].concat());
    let Some(Frame::Msg(data)) = s.next().await else {
        panic!("data")
    };
    assert_eq!(data["event"]["data"]["stdout"], b64("streamed\n"));
    e.unary(
        "process.Process/CloseStdin",
        json!({"process": {"pid": pid}}),
    )
    .await;
    assert_eq!(end_of(&s.collect().await)["status"], "exit status 0");
}
