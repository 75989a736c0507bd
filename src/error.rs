//! The one mapping from refusals to gRPC statuses with `ErrorInfo` and
//! `BadRequest` details.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::{Class, Reason, Rejection};

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

/// The status a client receives for `r`.
pub fn status(r: &Rejection) -> Status {
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
    status(&Rejection::new(Reason::INTERNAL, message))
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        status(&r)
    }
}
