//! `nubo.v1.Invocations`: invoke (sync and Event), logs, the dead-letter
//! queue and the async queue's status.

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{request_id, Api};

#[tonic::async_trait]
impl pb::invocations_server::Invocations for Api {
    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Invocations/Invoke");
        self.run(call, async {
            // Not in a spawned task: measured, that costs a 40 ms stall on
            // ~15% of warm calls. A caller that goes away drops this future;
            // the worker finishes the call on its own and the placement
            // counter is released by a guard (see invoke/mod.rs).
            let rid = request_id(request.metadata())?;
            super::invoke(
                &self.invoker,
                &self.dispatcher,
                request.into_inner(),
                false,
                rid,
            )
            .await
        })
        .await
    }

    async fn get_logs(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Invocations/GetLogs");
        self.run(call, async {
            self.invoker.logs(request.into_inner()).await
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Invocations/ListDeadLetters");
        self.run(call, async {
            self.dispatcher
                .list_dead_letters(request.into_inner())
                .await
        })
        .await
    }
    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let call = self.authorize(
            request.metadata(),
            "/nubo.v1.Invocations/RedriveDeadLetters",
        );
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            self.dispatcher
                .redrive_dead_letters(request.into_inner(), rid)
                .await
        })
        .await
    }
    async fn purge_dead_letters(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Invocations/PurgeDeadLetters");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            self.dispatcher
                .purge_dead_letters(request.into_inner(), rid)
                .await
        })
        .await
    }
    async fn async_status(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::AsyncStatusResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Invocations/AsyncStatus");
        self.run(call, async {
            self.dispatcher.async_status(request.into_inner()).await
        })
        .await
    }
}
