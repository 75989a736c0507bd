//! The client's connection: the address, TLS, and the token on every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::fail::chain;
use super::{CliError, ClientArgs};
use crate::pb::audit_service_client::AuditServiceClient;
use crate::pb::channel_service_client::ChannelServiceClient;
use crate::pb::message_service_client::MessageServiceClient;
use crate::pb::party_service_client::PartyServiceClient;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the token to every call.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The connection with the token on every call.
pub type Svc = InterceptedService<Channel, Token>;

/// The services of one server, over one connection.
#[derive(Clone)]
pub struct Client {
    /// The address as called (with its scheme).
    pub url: String,
    /// PartyService.
    pub parties: PartyServiceClient<Svc>,
    /// ChannelService.
    pub channels: ChannelServiceClient<Svc>,
    /// MessageService.
    pub messages: MessageServiceClient<Svc>,
    /// AuditService.
    pub audit: AuditServiceClient<Svc>,
    /// The connection itself, for calls the generated clients cannot make
    /// (the stored bytes of each event).
    pub svc: Svc,
}

/// The URL to call: the scheme given, else https when TLS options are set.
pub fn url_of(args: &ClientArgs) -> String {
    let tls = args.ca_cert.is_some() || args.client_cert.is_some();
    match args.addr.split_once("://") {
        Some(("http", rest)) if tls => format!("https://{rest}"),
        Some(_) => args.addr.clone(),
        None if tls => format!("https://{}", args.addr),
        None => format!("http://{}", args.addr),
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::Local(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The token the options give, if any: `--token`, `--token-file`, then
/// `BACKCHANNEL_TOKEN` and `BACKCHANNEL_TOKEN_FILE` (an empty variable is
/// unset).
pub fn token_given(args: &ClientArgs) -> Result<Option<String>, CliError> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let from_file = |f: &std::path::Path| {
        String::from_utf8(read(f, "token file")?)
            .map(|t| t.trim().to_owned())
            .map_err(|_| CliError::Local(format!("the token file {} is not text", f.display())))
    };
    if let Some(t) = &args.token {
        return Ok(Some(t.trim().to_owned()));
    }
    if let Some(f) = &args.token_file {
        return from_file(f).map(Some);
    }
    if let Some(t) = var("BACKCHANNEL_TOKEN") {
        return t
            .into_string()
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|_| CliError::usage("BACKCHANNEL_TOKEN is not text"));
    }
    match var("BACKCHANNEL_TOKEN_FILE") {
        Some(f) => from_file(std::path::Path::new(&f)).map(Some),
        None => Ok(None),
    }
}

fn token(args: &ClientArgs) -> Result<Token, CliError> {
    match token_given(args)? {
        None => Ok(Token(None)),
        Some(s) if s.is_empty() => Err(CliError::usage("the token is empty")),
        Some(s) => format!("Bearer {s}")
            .parse()
            .map(|v| Token(Some(v)))
            .map_err(|_| CliError::usage("the token holds characters a header cannot carry")),
    }
}

/// An endpoint for the options' address, with TLS when asked for.
pub fn endpoint(args: &ClientArgs) -> Result<Endpoint, CliError> {
    let url = url_of(args);
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::usage(format!("--addr {url}: {}", chain(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &args.ca_cert {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| CliError::usage(format!("TLS settings: {}", chain(&e))))?;
    }
    Ok(ep)
}

/// Connects to the server the options name.
pub async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let token = token(args)?;
    let url = url_of(args);
    let channel = endpoint(args)?
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            addr: url.clone(),
            cause: chain(&e),
        })?;
    Ok(Client {
        parties: PartyServiceClient::with_interceptor(channel.clone(), token.clone()),
        channels: ChannelServiceClient::with_interceptor(channel.clone(), token.clone()),
        messages: MessageServiceClient::with_interceptor(channel.clone(), token.clone()),
        audit: AuditServiceClient::with_interceptor(channel.clone(), token.clone()),
        svc: InterceptedService::new(channel, token),
        url,
    })
}
