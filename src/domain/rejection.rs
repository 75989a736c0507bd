//! Why a request is refused: a stable reason, a class, and a message a person
//! can act on. Only `crate::error` turns these into gRPC statuses.

use std::fmt;

/// The broad class of a refusal; `crate::error` maps each to one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No or bad credentials.
    Unauthenticated,
    /// The request alone is malformed.
    InvalidArgument,
    /// Absent, or not visible to the caller.
    NotFound,
    /// The caller's role can never do this.
    PermissionDenied,
    /// The id is taken.
    AlreadyExists,
    /// `expected_version` does not match.
    Aborted,
    /// Not allowed in the current state.
    FailedPrecondition,
    /// Past the end of the log.
    OutOfRange,
    /// Over a limit.
    ResourceExhausted,
    /// The store or the server is not available; retry.
    Unavailable,
    /// A stored record failed its integrity check.
    DataLoss,
    /// A bug or broken store.
    Internal,
}

macro_rules! reasons {
    ($($name:ident => $status:ident),* $(,)?) => {
        /// Stable `ErrorInfo.reason` codes; the proto's header lists each one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum Reason { $($name),* }

        impl Reason {
            /// The UPPER_SNAKE code sent to clients.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name)),* }
            }
            /// The class (and so the gRPC code) of this reason.
            pub fn class(self) -> Class {
                match self { $(Reason::$name => Class::$status),* }
            }
        }
    };
}

reasons! {
    UNAUTHENTICATED => Unauthenticated,
    INVALID_FIELD => InvalidArgument,
    INVALID_REQUEST => InvalidArgument,
    UNKNOWN_PARTY => InvalidArgument,
    INVALID_ROUTE => InvalidArgument,
    INVALID_PAGE_TOKEN => InvalidArgument,
    REQUEST_ID_REUSED => InvalidArgument,
    REPLY_CHANNEL_MISMATCH => InvalidArgument,
    PARTY_NOT_FOUND => NotFound,
    CHANNEL_NOT_FOUND => NotFound,
    MESSAGE_NOT_FOUND => NotFound,
    TOKEN_NOT_FOUND => NotFound,
    EVENT_NOT_FOUND => NotFound,
    ADMIN_ONLY => PermissionDenied,
    READ_ONLY_TOKEN => PermissionDenied,
    NOT_A_PRINCIPAL => PermissionDenied,
    NOT_A_MEDIATOR => PermissionDenied,
    NOT_THE_SENDER => PermissionDenied,
    NOT_THE_RECIPIENT => PermissionDenied,
    ADMIN_NOT_A_PARTY => PermissionDenied,
    PARTY_EXISTS => AlreadyExists,
    VERSION_MISMATCH => Aborted,
    CHANNEL_SUSPENDED => FailedPrecondition,
    CHANNEL_CLOSED => FailedPrecondition,
    CHANNEL_NOT_OPEN => FailedPrecondition,
    CHANNEL_NOT_SUSPENDED => FailedPrecondition,
    CHANNEL_ALREADY_CLOSED => FailedPrecondition,
    NOT_CURRENT_MEDIATOR => FailedPrecondition,
    HOP_ALREADY_ACCEPTED => FailedPrecondition,
    MESSAGE_NOT_IN_TRANSIT => FailedPrecondition,
    MESSAGE_NOT_DELIVERED => FailedPrecondition,
    MESSAGE_EXPIRED => FailedPrecondition,
    TOKEN_REVOKED => FailedPrecondition,
    START_AFTER_BEYOND_HEAD => OutOfRange,
    TREE_SIZE_BEYOND_HEAD => OutOfRange,
    REQUEST_TOO_LARGE => ResourceExhausted,
    TOO_MANY_SUBSCRIPTIONS => ResourceExhausted,
    RATE_LIMITED => ResourceExhausted,
    STORE_UNAVAILABLE => Unavailable,
    STORE_FULL => Unavailable,
    STORE_READ_ONLY => Unavailable,
    STORE_LOST => Unavailable,
    RECORD_CORRUPT => DataLoss,
    SHUTTING_DOWN => Unavailable,
    STATS_NOT_READY => Unavailable,
    INTERNAL => Internal,
}

/// One field that is wrong, for `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name in the request (`labels`, `parties[1]`).
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// A refusal: reason, message, and any field violations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stable code.
    pub reason: Reason,
    /// A sentence a person can act on.
    pub message: String,
    /// Field problems (only for `INVALID_ARGUMENT`).
    pub fields: Vec<FieldViolation>,
    /// Facts a client acts on (`ErrorInfo.metadata`), e.g. `limit`.
    pub metadata: Vec<(&'static str, String)>,
    /// When a retry may succeed (`google.rpc.RetryInfo`).
    pub retry_after: Option<std::time::Duration>,
}

impl Rejection {
    /// A refusal with a reason and a message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            fields: Vec::new(),
            metadata: Vec::new(),
            retry_after: None,
        }
    }

    /// This refusal with one more `ErrorInfo.metadata` entry.
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.metadata.push((key, value.to_string()));
        self
    }

    /// This refusal, telling the client when to retry.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// An `INVALID_FIELD` refusal naming one field.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let field = clip(field.into());
        let description = clip(description.into());
        Rejection {
            reason: Reason::INVALID_FIELD,
            message: format!("{field}: {description}"),
            metadata: vec![("field", field.clone())],
            fields: vec![FieldViolation { field, description }],
            retry_after: None,
        }
    }

    /// The class of this refusal.
    pub fn class(&self) -> Class {
        self.reason.class()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl std::error::Error for Rejection {}

/// Most field violations one refusal lists; the rest are counted.
pub const MAX_VIOLATIONS: usize = 20;
/// Most characters of a field name or description echoed back.
const MAX_ECHO_CHARS: usize = 200;

fn clip(s: String) -> String {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Collects field violations so one response names every bad field (up to
/// [`MAX_VIOLATIONS`], each clipped, so a hostile request cannot make the
/// error itself too large to send).
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>, usize);

impl Violations {
    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() >= MAX_VIOLATIONS {
            self.1 += 1;
            return;
        }
        self.0.push(FieldViolation {
            field: clip(field.into()),
            description: clip(description.into()),
        });
    }

    /// Records the error of a field parser, if any, and returns its value.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    /// `Ok` if nothing was recorded, else one `INVALID_FIELD` refusal.
    pub fn finish(self) -> Result<(), Rejection> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(self.refusal())
    }

    /// The `INVALID_FIELD` refusal naming what was recorded: for a handler
    /// missing a value that [`Violations::check`] refused (and so recorded).
    pub fn refusal(self) -> Rejection {
        let mut message = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        if self.1 > 0 {
            message += &format!("; and {} more", self.1);
        }
        // `field` names the first bad field; BadRequest lists them all.
        let metadata = self
            .0
            .first()
            .map(|v| ("field", v.field.clone()))
            .into_iter()
            .collect();
        Rejection {
            reason: Reason::INVALID_FIELD,
            message,
            fields: self.0,
            metadata,
            retry_after: None,
        }
    }
}
