//! InitProducerId: a producer id for idempotent producers (epoch 0), or the same id with a
//! bumped epoch when the producer asks with its current one (KIP-360; a new id once the epoch
//! is exhausted). Transactional ids are refused: transactions are not implemented.

use super::{decode_body, respond, Outcome};
use crate::{producer_state, shard};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: InitProducerIdRequest = decode_body(&mut req)?;
    let mut response = InitProducerIdResponse::default();
    if body.transactional_id.is_some() {
        response = response
            .with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        return Ok(respond(&req, &response));
    }
    // KIP-360: the producer keeps its id with the next epoch (its sequences restart at 0); at
    // the last epoch it gets a new id, as epoch 0 of the old one would be fenced as stale.
    let known = body.producer_id.0 >= 0 && body.producer_epoch >= 0;
    if let Some(epoch) = body.producer_epoch.checked_add(1).filter(|_| known) {
        return Ok(respond(
            &req,
            &response
                .with_producer_id(body.producer_id)
                .with_producer_epoch(epoch),
        ));
    }
    let data_dir = shard::current().shared.config.data_dir.clone();
    let id = mesh::call(0, move || async move {
        producer_state::allocate_producer_id(&data_dir)
    })
    .await;
    response = match id {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(code) => response
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    };
    Ok(respond(&req, &response))
}
