//! AWS Signature V4 for Amazon OpenSearch Service (`es`) and OpenSearch Serverless (`aoss`):
//! the region and service from the configuration, credentials from the standard AWS chain
//! (environment, profile files, web identity, ECS, EC2 instance metadata, `credential_process`),
//! resolved on first use and cached until five minutes before they expire, so that signing a
//! request does not ask the chain (possibly over the network) every time. The `opensearch`
//! crate signs each request with them. Credentials are never logged: their `Debug` redacts the
//! secret, and no error here carries them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::{self, future, ProvideCredentials, SharedCredentialsProvider};
use aws_types::region::Region;
use whale_kernel::config::IndexConfig;

use crate::backend::Error;

/// Refresh cached credentials this long before they expire.
const EARLY: Duration = Duration::from_secs(300);

/// The client credentials for `index.opensearch_auth = "aws_sigv4"`, and the service signed for.
pub(super) fn credentials(
    cfg: &IndexConfig,
) -> Result<(opensearch::auth::Credentials, &str), Error> {
    let region = cfg
        .opensearch_aws_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| {
            Error::Invalid(
                "index.opensearch_auth = aws_sigv4 needs a region: set index.opensearch_aws_region \
                 (WHALE_OPENSEARCH_AWS_REGION) or AWS_REGION"
                    .into(),
            )
        })?;
    let region = Region::new(region);
    let chain = Chain {
        region: region.clone(),
        chain: tokio::sync::OnceCell::new(),
        cached: Mutex::new(None),
    };
    Ok((
        opensearch::auth::Credentials::AwsSigV4(SharedCredentialsProvider::new(chain), region),
        cfg.opensearch_aws_service.as_str(),
    ))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The default AWS credentials chain, built on first use (building it is async), with a cache.
#[derive(Debug)]
struct Chain {
    region: Region,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
    cached: Mutex<Option<aws_credential_types::Credentials>>,
}

impl Chain {
    fn fresh(&self) -> Option<aws_credential_types::Credentials> {
        let cached = self.cached.lock().ok()?;
        let c = cached.as_ref()?;
        match c.expiry() {
            Some(at) if at <= SystemTime::now() + EARLY => None,
            _ => Some(c.clone()),
        }
    }

    async fn load(&self) -> provider::Result {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let chain = self
            .chain
            .get_or_init(|| {
                DefaultCredentialsChain::builder()
                    .region(self.region.clone())
                    .build()
            })
            .await;
        let c = chain.provide_credentials().await?;
        // Never printed: the AWS crates' debug logs show the canonical request, which holds the
        // session token header, so both secret parts are scrubbed from every log line.
        whale_kernel::telemetry::hide(c.secret_access_key());
        if let Some(token) = c.session_token() {
            whale_kernel::telemetry::hide(token);
        }
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(c.clone());
        }
        Ok(c)
    }
}

impl ProvideCredentials for Chain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}
