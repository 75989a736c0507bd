//! The one mapping from refusals, and from the store's failures, to gRPC
//! statuses with `ErrorInfo` and `BadRequest` details.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::{Class, Reason, Rejection};
use crate::store::{Fault, StoreError, WriteError};

/// `ErrorInfo.domain` of every Backchannel error.
pub const ERROR_DOMAIN: &str = "backchannel.v1";

/// The gRPC code of a refusal class.
pub fn code(class: Class) -> Code {
    match class {
        Class::Unauthenticated => Code::Unauthenticated,
        Class::InvalidArgument => Code::InvalidArgument,
        Class::NotFound => Code::NotFound,
        Class::PermissionDenied => Code::PermissionDenied,
        Class::AlreadyExists => Code::AlreadyExists,
        Class::Aborted => Code::Aborted,
        Class::FailedPrecondition => Code::FailedPrecondition,
        Class::OutOfRange => Code::OutOfRange,
        Class::ResourceExhausted => Code::ResourceExhausted,
        Class::Unavailable => Code::Unavailable,
        Class::DataLoss => Code::DataLoss,
        Class::Internal => Code::Internal,
    }
}

/// The status a client receives for `r`. An `INTERNAL` refusal is a bug
/// of ours, logged here.
pub fn status(r: &Rejection) -> Status {
    if r.reason == Reason::INTERNAL {
        tracing::error!(message = %r.message, "internal error");
    }
    details(r)
}

fn details(r: &Rejection) -> Status {
    let mut details = ErrorDetails::with_error_info(
        r.reason.as_str(),
        ERROR_DOMAIN,
        r.metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<std::collections::HashMap<String, String>>(),
    );
    if let Some(after) = r.retry_after {
        details.set_retry_info(Some(after));
    }
    if !r.fields.is_empty() {
        details.set_bad_request(
            r.fields
                .iter()
                .map(|f| FieldViolation::new(f.field.clone(), f.description.clone()))
                .collect::<Vec<_>>(),
        );
    }
    Status::with_error_details(code(r.class()), r.message.clone(), details)
}

/// The status of a fault of the server's own (a bug, not the request), which
/// is logged here with its `cause`: `INTERNAL`, and nothing of the cause
/// for the client.
pub fn internal(message: &'static str, cause: &dyn std::fmt::Debug) -> Status {
    tracing::error!(?cause, "{message}");
    details(&Rejection::new(Reason::INTERNAL, message))
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        status(&r)
    }
}

/// The reason a client is given for a store failure of kind `f`.
pub fn fault_reason(f: Fault) -> Reason {
    match f {
        Fault::Unavailable => Reason::STORE_UNAVAILABLE,
        Fault::Full => Reason::STORE_FULL,
        Fault::ReadOnly => Reason::STORE_READ_ONLY,
        Fault::Lost => Reason::STORE_LOST,
        Fault::Corrupt => Reason::RECORD_CORRUPT,
        Fault::Closing => Reason::SHUTTING_DOWN,
        Fault::Internal => Reason::INTERNAL,
    }
}

/// The status of a store failure. An unexpected one is logged here with
/// its cause and reaches the client only as `INTERNAL`; the others say what
/// the operator must do, and the writer logs them once per fault.
pub fn store_status(e: &StoreError) -> Status {
    let reason = fault_reason(e.fault);
    match e.fault {
        Fault::Internal => {
            tracing::error!(error = %e, source = ?e.source, "store error");
            details(&Rejection::new(reason, "internal store error"))
        }
        Fault::Corrupt => {
            tracing::error!(error = %e, source = ?e.source, "the store is damaged");
            status(&Rejection::new(reason, e.message.clone()))
        }
        _ => status(&Rejection::new(reason, e.message.clone())),
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        store_status(&e)
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match e {
            WriteError::Refused(r) => status(&r),
            WriteError::Store(e) => store_status(&e),
        }
    }
}

/// The status of a call to a method no service here serves.
pub fn unknown_method(path: &str) -> Status {
    let path: String = path.chars().take(200).collect();
    Status::unimplemented(format!(
        "no method {path} here: this server serves backchannel.v1 (PartyService, \
         ChannelService, MessageService), grpc.health.v1.Health and server reflection"
    ))
}
