//! SaslAuthenticate (v0-2): one message of the SASL exchange SaslHandshake started. v1+
//! answers carry the session lifetime (KIP-368, `connections.max.reauth.ms`). A failure is
//! answered SASL_AUTHENTICATION_FAILED after `failed_authentication_delay`, then the
//! connection closes.

use super::{decode_body, respond, Outcome};
use crate::security::sasl::{self, Answer};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: SaslAuthenticateRequest = decode_body(&mut req)?;
    if let Some(closed) = sasl::refused_after_failure(conn) {
        return Ok(closed);
    }
    if !sasl::exchange_in_progress(conn) {
        // No SaslHandshake v1 before it: on an authenticated connection Kafka's request
        // handler answers this (the connection stays); before authentication the
        // authenticator refuses the order and closes.
        let response = SaslAuthenticateResponse::default()
            .with_error_code(sasl::ILLEGAL_SASL_STATE)
            .with_error_message(Some(StrBytes::from_static_str(
                "SaslAuthenticate request received after successful authentication",
            )));
        let answer = respond(&req, &response);
        if !conn.authenticated.get() {
            conn.auth_failed.set(true);
        }
        return Ok(match answer {
            Outcome::Respond(frame) if !conn.authenticated.get() => Outcome::RespondThenClose(
                frame,
                "SaslAuthenticate before SaslHandshake".to_string(),
            ),
            answer => answer,
        });
    }
    match sasl::authenticate(conn, &body.auth_bytes) {
        Ok(Answer::Continue(bytes)) => Ok(respond(
            &req,
            &SaslAuthenticateResponse::default().with_auth_bytes(bytes.into()),
        )),
        Ok(Answer::Done(bytes)) => {
            let lifetime_ms = if req.version >= 1 {
                sasl::session_lifetime_ms()
            } else {
                0
            };
            Ok(respond(
                &req,
                &SaslAuthenticateResponse::default()
                    .with_auth_bytes(bytes.into())
                    .with_session_lifetime_ms(lifetime_ms),
            ))
        }
        Err(failure) => {
            sasl::log_failure(conn, &failure);
            sasl::failure_delay().await;
            let response = SaslAuthenticateResponse::default()
                .with_error_code(sasl::SASL_AUTHENTICATION_FAILED)
                .with_error_message(Some(StrBytes::from_string(failure.message.clone())));
            Ok(match respond(&req, &response) {
                Outcome::Respond(frame) => Outcome::RespondThenClose(
                    frame,
                    format!("SASL authentication failed: {}", failure.message),
                ),
                other => other,
            })
        }
    }
}

impl crate::stats::ErrorCodes for SaslAuthenticateResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}
