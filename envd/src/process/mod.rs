//! `process.Process` (to be written).

use connectrpc::{ConnectError, RequestContext, ServiceRequest, ServiceResult, ServiceStream, InboundStream};
use envd_protocol::process::*;

use crate::sandbox::Sandbox;

/// The process service.
#[derive(Debug, Clone)]
pub struct ProcessService {
    #[allow(dead_code)]
    sandbox: Sandbox,
}

impl ProcessService {
    /// Creates the service.
    pub fn new(sandbox: Sandbox) -> Self {
        Self { sandbox }
    }
}

fn todo<T>() -> Result<T, ConnectError> {
    Err(ConnectError::unimplemented("not yet"))
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(&self, _ctx: RequestContext, _r: ServiceRequest<'_, ListRequest>) -> ServiceResult<ListResponse> { todo() }
    async fn connect(&self, _ctx: RequestContext, _r: ServiceRequest<'_, ConnectRequest>) -> ServiceResult<ServiceStream<ConnectResponse>> { todo() }
    async fn start(&self, _ctx: RequestContext, _r: ServiceRequest<'_, StartRequest>) -> ServiceResult<ServiceStream<StartResponse>> { todo() }
    async fn update(&self, _ctx: RequestContext, _r: ServiceRequest<'_, UpdateRequest>) -> ServiceResult<UpdateResponse> { todo() }
    async fn stream_input(&self, _ctx: RequestContext, _r: InboundStream<StreamInputRequest>) -> ServiceResult<StreamInputResponse> { todo() }
    async fn send_input(&self, _ctx: RequestContext, _r: ServiceRequest<'_, SendInputRequest>) -> ServiceResult<SendInputResponse> { todo() }
    async fn send_signal(&self, _ctx: RequestContext, _r: ServiceRequest<'_, SendSignalRequest>) -> ServiceResult<SendSignalResponse> { todo() }
    async fn close_stdin(&self, _ctx: RequestContext, _r: ServiceRequest<'_, CloseStdinRequest>) -> ServiceResult<CloseStdinResponse> { todo() }
}
