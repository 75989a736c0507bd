//! How a client subcommand fails: one line on stderr and its exit status.

use std::process::ExitCode;

use tonic::Code;
use tonic_types::StatusExt;

/// Why a client subcommand did not succeed.
#[derive(Debug)]
pub enum CliError {
    /// The server refused the call (exit 1).
    Refused(Box<tonic::Status>),
    /// The server could not be reached (exit 1).
    Unreachable {
        /// The address called.
        addr: String,
        /// What went wrong, with its causes.
        cause: String,
    },
    /// The command line asked for something that cannot be done (exit 2).
    Usage(String),
    /// A local file could not be read or written (exit 1).
    Local(String),
    /// `audit` found a problem: its verdict line (exit 3).
    Found(String),
}

impl CliError {
    /// A usage error.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Usage(message.into())
    }

    /// This error, with a call that failed in the connection rather than
    /// at the server (a TLS alert, a reset) told as the server being out of
    /// reach at `addr`, with its causes.
    pub fn on_connection_to(self, addr: &str) -> CliError {
        match self {
            CliError::Refused(status)
                if status.get_details_error_info().is_none()
                    && std::error::Error::source(&*status).is_some() =>
            {
                let cause = match std::error::Error::source(&*status) {
                    Some(source) => format!("{}: {}", status.message(), chain(source)),
                    None => status.message().to_owned(),
                };
                CliError::Unreachable {
                    addr: addr.to_owned(),
                    cause,
                }
            }
            e => e,
        }
    }

    /// The status code name (`NOT_FOUND`) of a refusal, if it is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            CliError::Refused(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The line printed on stderr.
    pub fn line(&self) -> String {
        match self {
            CliError::Refused(status) => {
                let code = code_name(status.code());
                let reason = status
                    .get_details_error_info()
                    .map(|i| i.reason)
                    .filter(|r| !r.is_empty());
                let message = status.message();
                match reason {
                    Some(r) => format!("error: {code} {r}: {message}"),
                    None => format!("error: {code}: {message}"),
                }
            }
            CliError::Unreachable { addr, cause } => {
                format!(
                    "error: UNAVAILABLE: cannot reach the server at {addr}: {cause}{}",
                    tls_hint(addr, cause)
                )
            }
            CliError::Usage(m) => format!("error: {m}"),
            CliError::Local(m) => format!("error: {m}"),
            CliError::Found(verdict) => verdict.clone(),
        }
    }

    /// Prints the line (and, for a call made with no token, how to give
    /// one) and gives the exit status.
    pub fn report(&self, token_given: bool) -> ExitCode {
        eprintln!("{}", self.line());
        if self.code() == Some(Code::Unauthenticated) && !token_given {
            eprintln!(
                "hint: give a token with --token-file FILE, BACKCHANNEL_TOKEN or --token \
                 (the admin's is in the data directory's admin.token)"
            );
        }
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Found(_) => ExitCode::from(3),
            _ => ExitCode::from(1),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> CliError {
        CliError::Refused(Box::new(status))
    }
}

/// A hint when the failure looks like TLS on one side only.
fn tls_hint(addr: &str, cause: &str) -> &'static str {
    let tls = addr.starts_with("https://");
    let lower = cause.to_ascii_lowercase();
    if tls && lower.contains("invalidcontenttype") {
        "; the server does not seem to speak TLS: try an http:// address"
    } else if !tls
        && [
            "broken pipe",
            "canceled",
            "connection reset",
            "frame with invalid size",
        ]
        .iter()
        .any(|w| lower.contains(w))
    {
        "; if the server serves TLS, use an https:// address (and --ca-cert)"
    } else {
        ""
    }
}

/// An error and its causes, joined: tonic's transport errors say only
/// "transport error" at the top.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The canonical name of a status code, as the gRPC spec and DESIGN write it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
