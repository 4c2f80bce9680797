//! `InitProducerId`: shard 0 owns the producer id allocator (see [`crate::producer_ids`]);
//! other shards forward the request there. In a cluster the metadata leader hands ids out,
//! through the metadata log (see `metadata_log`), so they are unique cluster-wide and a named
//! producer's epoch fences its previous instance whichever broker each one asked.

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use super::{Failure, Shard, ShardMsg};
use crate::producer_ids::ProducerIdError;

impl Shard {
    pub(super) async fn handle_init_producer_id(
        &self,
        name: Option<String>,
    ) -> Result<ResponseBodyT, Failure> {
        if self.id == 0 {
            return self.init_producer_id_here(name).await;
        }
        self.call(0, |reply| ShardMsg::InitProducerId { name, reply }).await?
    }

    /// Shard 0: through the metadata log in a cluster, else from this broker's allocator.
    pub(super) async fn init_producer_id_here(
        &self,
        name: Option<String>,
    ) -> Result<ResponseBodyT, Failure> {
        if self.config.cluster.is_none() {
            return self.init_producer_id_local(name);
        }
        let request = wire::InitProducerIdRequestT { producer_name: name };
        self.metadata_change(RequestBodyT::InitProducerIdRequest(Box::new(request))).await
    }

    /// Hands out an id (and epoch), saving the allocator first when the answer needs it: an id
    /// or epoch is never handed out before it is durable. Synchronous, so two inits never
    /// interleave.
    fn init_producer_id_local(&self, name: Option<String>) -> Result<ResponseBodyT, Failure> {
        let ids = self.producer_ids.as_ref().expect("producer ids live on shard 0");
        let mut next = ids.borrow().clone();
        let (identity, save) = next.init(name.as_deref()).map_err(failure)?;
        if save {
            next.save(&self.config.data_dir).map_err(failure)?;
        }
        *ids.borrow_mut() = next;
        tracing::debug!(name = ?name, id = identity.id, epoch = identity.epoch, "init producer id");
        Ok(ResponseBodyT::InitProducerIdResponse(Box::new(wire::InitProducerIdResponseT {
            producer_id: identity.id,
            producer_epoch: identity.epoch,
        })))
    }
}

pub(super) fn failure(error: ProducerIdError) -> Failure {
    let code = match error {
        ProducerIdError::TooManyNames => ErrorCode::InvalidRequest,
        ProducerIdError::Exhausted => ErrorCode::Unknown,
        ProducerIdError::File { .. } => ErrorCode::StorageError,
    };
    Failure::new(code, error.to_string())
}
