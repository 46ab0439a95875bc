//! SaslHandshake (v0-1): the client names its SASL mechanism; the answer lists the enabled
//! ones. An unknown or disabled mechanism gets UNSUPPORTED_SASL_MECHANISM and the connection
//! closes; on a listener without SASL (or an authenticated connection that may not
//! re-authenticate) the answer is ILLEGAL_SASL_STATE, as Kafka's request handler gives.

use super::{decode_body, respond, Outcome};
use crate::security::sasl;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: SaslHandshakeRequest = decode_body(&mut req)?;
    if let Some(closed) = sasl::refused_after_failure(conn) {
        return Ok(closed);
    }
    let outcome = sasl::handshake(conn, body.mechanism.as_str(), req.version);
    let mechanisms = if conn.protocol.uses_sasl() {
        sasl::enabled_mechanisms()
            .into_iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect()
    } else {
        Vec::new()
    };
    let response = SaslHandshakeResponse::default()
        .with_error_code(outcome.error_code)
        .with_mechanisms(mechanisms);
    let answer = respond(&req, &response);
    Ok(match (outcome.close, answer) {
        (Some(reason), Outcome::Respond(frame)) => {
            crate::warn_limited!(peer = %conn.peer, mechanism = %body.mechanism.as_str().escape_debug(), %reason, "SASL handshake refused");
            Outcome::RespondThenClose(frame, reason)
        }
        (_, answer) => answer,
    })
}

impl crate::stats::ErrorCodes for SaslHandshakeResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}
