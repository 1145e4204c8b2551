//! `process.Process`: start, attach to, feed, signal and list processes.
//!
//! The service is the only owner of the processes it starts ([`table`]);
//! each one is a [`handle::ProcessHandle`] whose lifecycle is drawn there.
//! Streams (`Start`, `Connect`) are views on a process: dropping one never
//! affects the process. `Connect-Timeout-Ms` on `Start` bounds the process
//! lifetime (the SDK's command timeout); on `Connect` it bounds only the
//! stream.

pub mod handle;
pub mod pty;
pub mod spawn;
pub mod status;
pub mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectrpc::{
    ConnectError, InboundStream, RequestContext, ServiceRequest, ServiceResult, ServiceStream,
};
use envd_protocol::process::__buffa::oneof::process_event::data_event::Output as WireOutput;
use envd_protocol::process::__buffa::oneof::process_input::Input as WireInput;
use envd_protocol::process::__buffa::oneof::stream_input_request::Event as InputEvent;
use envd_protocol::process::process_event::{DataEvent, KeepAlive, StartEvent};
use envd_protocol::process::*;
use futures::StreamExt as _;

use self::handle::{Event, Output, ProcessHandle, Subscription};
use self::table::{Table, describe};
use crate::sandbox::Sandbox;

/// The process service.
#[derive(Debug, Clone)]
pub struct ProcessService {
    sandbox: Sandbox,
    table: Arc<Table>,
}

impl ProcessService {
    /// Creates the service with an empty process table.
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox,
            table: Arc::new(Table::default()),
        }
    }

    fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<ProcessHandle>, ConnectError> {
        self.table
            .find(selector)
            .ok_or_else(|| ConnectError::not_found(format!("{} not found", describe(selector))))
    }

    fn start_process(
        &self,
        ctx: &RequestContext,
        req: StartRequest,
    ) -> Result<(Arc<ProcessHandle>, tokio::sync::mpsc::Receiver<Event>), ConnectError> {
        let user_name = crate::rpc::basic_auth_user(ctx.headers());
        let user = self
            .sandbox
            .resolve_user(user_name.as_deref())
            .map_err(crate::rpc::user_error)?;
        let config = req.process.into_option().unwrap_or_default();
        let settings = self.sandbox.settings();
        let cwd = crate::paths::resolve(
            config.cwd.as_deref().unwrap_or_default(),
            &user,
            settings.default_workdir.as_deref(),
        )
        .map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
        let mut env = self.sandbox.process_env(&user);
        let mut extra: Vec<_> = config
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        extra.sort();
        env.extend(extra);
        let pty = req.pty.as_option().map(|p| {
            let size = p.size.as_option().cloned().unwrap_or_default();
            (clamp_u16(size.cols, 80), clamp_u16(size.rows, 24))
        });
        let spec = spawn::SpawnSpec {
            cmd: config.cmd.clone(),
            args: config.args.clone(),
            env,
            cwd,
            user,
            pty,
            stdin: req.stdin.unwrap_or(true),
        };
        let spawned = spawn::spawn(&spec).map_err(|e| match e {
            spawn::Error::NotRoot { .. } => ConnectError::permission_denied(e.to_string()),
            spawn::Error::Pty(_) => ConnectError::internal(format!("{e}: {}", chain(&e))),
            spawn::Error::MissingCwd(_) | spawn::Error::Exec { .. } => {
                ConnectError::invalid_argument(e.to_string())
            }
        })?;
        let table = self.table.clone();
        let (handle, rx) =
            ProcessHandle::launch(spawned, config, req.tag.clone(), ctx.deadline(), move |h| {
                tokio::spawn(async move {
                    tokio::time::sleep(handle::KEEP_EXITED).await;
                    table.remove(&h);
                });
            })
            .map_err(|e| ConnectError::internal(format!("register process: {e}")))?;
        self.table.insert(handle.clone());
        tracing::info!(pid = handle.pid, cmd = %handle.config.cmd, "process started");
        Ok((handle, rx))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    e.source().map(ToString::to_string).unwrap_or_default()
}

fn clamp_u16(v: u32, default: u16) -> u16 {
    if v == 0 {
        default
    } else {
        u16::try_from(v).unwrap_or(u16::MAX)
    }
}

fn process_event(
    event: impl Into<Option<envd_protocol::process::__buffa::oneof::process_event::Event>>,
) -> ProcessEvent {
    ProcessEvent {
        event: event.into(),
        ..ProcessEvent::default()
    }
}

fn wire(event: &Event) -> ProcessEvent {
    match event {
        Event::Data(out) => {
            let output = match out {
                Output::Stdout(b) => WireOutput::Stdout(b.clone()),
                Output::Stderr(b) => WireOutput::Stderr(b.clone()),
                Output::Pty(b) => WireOutput::Pty(b.clone()),
            };
            process_event(DataEvent {
                output: Some(output),
                ..DataEvent::default()
            })
        }
        Event::End(end) => process_event(end.clone()),
    }
}

/// The event stream shared by `Start` and `Connect`: `start` first, then
/// output and keepalives, then `end`. At `deadline` the stream ends with
/// `deadline_exceeded` (what the SDKs turn into a timeout).
fn event_stream<R: Send + 'static>(
    pid: u32,
    sub: Subscription,
    keepalive: Duration,
    deadline: Option<Instant>,
    wrap: fn(ProcessEvent) -> R,
) -> ServiceStream<R> {
    Box::pin(async_stream::stream! {
        yield Ok(wrap(process_event(StartEvent { pid, ..StartEvent::default() })));
        let mut rx = match sub {
            Subscription::Ended(end) => {
                yield Ok(wrap(process_event(end)));
                return;
            }
            Subscription::Live(rx) => rx,
        };
        let deadline_sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_sleep);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        let end = matches!(ev, Event::End(_));
                        yield Ok(wrap(wire(&ev)));
                        if end { return; }
                    }
                    None => return,
                },
                () = tokio::time::sleep(keepalive) => {
                    yield Ok(wrap(process_event(KeepAlive::default())));
                }
                () = &mut deadline_sleep => {
                    yield Err(ConnectError::deadline_exceeded("the request deadline was reached"));
                    return;
                }
            }
        }
    })
}

fn start_response(event: ProcessEvent) -> StartResponse {
    StartResponse {
        event: event.into(),
        ..StartResponse::default()
    }
}

fn connect_response(event: ProcessEvent) -> ConnectResponse {
    ConnectResponse {
        event: event.into(),
        ..ConnectResponse::default()
    }
}

fn input_error(e: handle::Error) -> ConnectError {
    ConnectError::internal(e.to_string())
}

async fn deliver(handle: &ProcessHandle, input: Option<&WireInput>) -> Result<(), ConnectError> {
    match input {
        Some(WireInput::Stdin(data)) => handle.write_stdin(data).await.map_err(input_error),
        Some(WireInput::Pty(data)) => handle.write_pty(data).await.map_err(input_error),
        None => Ok(()),
    }
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let processes = self
            .table
            .running()
            .iter()
            .map(|h| ProcessInfo {
                config: h.config.clone().into(),
                pid: h.pid,
                tag: h.tag.clone(),
                ..ProcessInfo::default()
            })
            .collect();
        Ok(ListResponse {
            processes,
            ..ListResponse::default()
        }
        .into())
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let req = r.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        let stream = event_stream(
            handle.pid,
            handle.subscribe(),
            crate::rpc::keepalive_interval(&ctx),
            ctx.deadline(),
            connect_response,
        );
        Ok(stream.into())
    }

    async fn start(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let req = r.to_owned_message();
        let (handle, rx) = self.start_process(&ctx, req)?;
        let stream = event_stream(
            handle.pid,
            Subscription::Live(rx),
            crate::rpc::keepalive_interval(&ctx),
            ctx.deadline(),
            start_response,
        );
        Ok(stream.into())
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = r.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        if let Some(pty) = req.pty.as_option() {
            let size = pty.size.as_option().cloned().unwrap_or_default();
            handle
                .resize(clamp_u16(size.cols, 80), clamp_u16(size.rows, 24))
                .map_err(input_error)?;
        }
        Ok(UpdateResponse::default().into())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        let mut target: Option<Arc<ProcessHandle>> = None;
        while let Some(item) = requests.next().await {
            let msg = item?.to_owned_message();
            match msg.event {
                Some(InputEvent::Start(start)) => {
                    target = Some(self.find(start.process.as_option())?);
                }
                Some(InputEvent::Data(data)) => {
                    let handle = target.as_ref().ok_or_else(|| {
                        ConnectError::failed_precondition("input sent before the start event")
                    })?;
                    deliver(
                        handle,
                        data.input.as_option().and_then(|i| i.input.as_ref()),
                    )
                    .await?;
                }
                Some(InputEvent::Keepalive(_)) | None => {}
            }
        }
        Ok(StreamInputResponse::default().into())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let req = r.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        deliver(
            &handle,
            req.input.as_option().and_then(|i| i.input.as_ref()),
        )
        .await?;
        Ok(SendInputResponse::default().into())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let req = r.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        let sig = match req.signal.as_known() {
            Some(Signal::SIGNAL_SIGKILL) => nix::sys::signal::Signal::SIGKILL,
            Some(Signal::SIGNAL_SIGTERM) => nix::sys::signal::Signal::SIGTERM,
            Some(Signal::SIGNAL_UNSPECIFIED) | None => {
                return Err(ConnectError::unimplemented(
                    "only SIGKILL and SIGTERM are supported",
                ));
            }
        };
        handle
            .signal(sig)
            .map_err(|e| ConnectError::internal(format!("{e}: {}", chain(&e))))?;
        Ok(SendSignalResponse::default().into())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let req = r.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        handle
            .close_stdin()
            .await
            .map_err(|e| ConnectError::unknown(e.to_string()))?;
        Ok(CloseStdinResponse::default().into())
    }
}
