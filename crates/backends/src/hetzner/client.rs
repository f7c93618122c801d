//! A small typed client for the Hetzner Cloud API v1: the five calls Kiln makes.

use std::fmt;
use std::sync::Arc;

use kiln_core::{LifecycleClock, ProviderError};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::api::{
    Action, ActionResponse, CreateServerRequest, CreateServerResponse, DeleteServerResponse,
    ErrorResponse, ListServersResponse, Server, ServerResponse,
};
use super::config::HetznerSettings;
use super::error::{Failure, classify};

/// The Hetzner Cloud API, authenticated with one project's API token.
///
/// Every failure comes back classified by [`classify`]. The token never appears in
/// `Debug` output or logs.
#[derive(Clone)]
pub struct HetznerClient {
    http: reqwest::Client,
    api_url: String,
    token: String,
    clock: Arc<dyn LifecycleClock>,
}

impl fmt::Debug for HetznerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HetznerClient")
            .field("api_url", &self.api_url)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl HetznerClient {
    /// A client for `settings.api_url` with `token`; `clock` turns `RateLimit-Reset` into a
    /// wait.
    ///
    /// # Errors
    /// [`ProviderError::Invalid`] when the HTTP client cannot be built (bad TLS setup).
    pub fn new(
        settings: &HetznerSettings,
        token: impl Into<String>,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Invalid {
                code: "client_setup".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            api_url: settings.api_url.trim_end_matches('/').to_owned(),
            token: token.into(),
            clock,
        })
    }

    /// The same client (same connection pool and settings) authenticated with `token`.
    #[must_use]
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            ..self.clone()
        }
    }

    /// `POST /servers`.
    ///
    /// # Errors
    /// The classified failure.
    pub async fn create_server(
        &self,
        request: &CreateServerRequest,
    ) -> Result<CreateServerResponse, ProviderError> {
        let builder = self.request(Method::POST, "/servers").json(request);
        self.send(builder).await
    }

    /// `GET /servers/{id}`; `None` on 404.
    ///
    /// # Errors
    /// The classified failure.
    pub async fn get_server(&self, id: i64) -> Result<Option<Server>, ProviderError> {
        let builder = self.request(Method::GET, &format!("/servers/{id}"));
        Ok(self
            .send_allowing_404::<ServerResponse>(builder)
            .await?
            .map(|r| r.server))
    }

    /// `DELETE /servers/{id}`: the `delete_server` action, or `None` when the server is
    /// already gone (404).
    ///
    /// # Errors
    /// The classified failure.
    pub async fn delete_server(&self, id: i64) -> Result<Option<Action>, ProviderError> {
        let builder = self.request(Method::DELETE, &format!("/servers/{id}"));
        Ok(self
            .send_allowing_404::<DeleteServerResponse>(builder)
            .await?
            .map(|r| r.action))
    }

    /// `GET /servers?label_selector=…&page=…&per_page=…`: one page.
    ///
    /// # Errors
    /// The classified failure.
    pub async fn list_servers(
        &self,
        label_selector: &str,
        page: u32,
        per_page: u32,
    ) -> Result<ListServersResponse, ProviderError> {
        let builder = self.request(Method::GET, "/servers").query(&[
            ("label_selector", label_selector.to_owned()),
            ("page", page.to_string()),
            ("per_page", per_page.to_string()),
        ]);
        self.send(builder).await
    }

    /// `GET /actions/{id}`.
    ///
    /// # Errors
    /// The classified failure.
    pub async fn get_action(&self, id: i64) -> Result<Action, ProviderError> {
        let builder = self.request(Method::GET, &format!("/actions/{id}"));
        Ok(self.send::<ActionResponse>(builder).await?.action)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
    }

    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, ProviderError> {
        let response = self.execute(builder).await?;
        if response.status().is_success() {
            self.decode(response).await
        } else {
            Err(self.failure(response).await)
        }
    }

    async fn send_allowing_404<T: DeserializeOwned>(
        &self,
        builder: RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        let response = self.execute(builder).await?;
        if response.status() == StatusCode::NOT_FOUND {
            Ok(None)
        } else if response.status().is_success() {
            self.decode(response).await.map(Some)
        } else {
            Err(self.failure(response).await)
        }
    }

    async fn execute(&self, builder: RequestBuilder) -> Result<Response, ProviderError> {
        let (client, request) = builder.build_split();
        let request = request.map_err(|e| self.transport(&e))?;
        let (method, url) = (request.method().clone(), request.url().path().to_owned());
        let response = client
            .execute(request)
            .await
            .map_err(|e| self.transport(&e))?;
        let remaining = header(&response, "ratelimit-remaining");
        tracing::debug!(%method, path = %url, status = response.status().as_u16(),
            ratelimit_remaining = remaining.as_deref().unwrap_or("-"), "Hetzner API call");
        if remaining.as_deref() == Some("0") {
            tracing::warn!(path = %url, "Hetzner API rate limit exhausted");
        }
        Ok(response)
    }

    async fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, ProviderError> {
        let body = response.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&body).map_err(|e| {
            classify(
                &Failure::Transport {
                    timed_out: false,
                    message: format!("unexpected response body: {e}"),
                },
                self.clock.now(),
            )
        })
    }

    async fn failure(&self, response: Response) -> ProviderError {
        let status = response.status().as_u16();
        let rate_limit_reset = header(&response, "ratelimit-reset").and_then(|v| v.parse().ok());
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) => return self.transport(&e),
        };
        let parsed = serde_json::from_str::<ErrorResponse>(&body).ok();
        let (code, message) = match &parsed {
            Some(error) => (
                Some(error.error.code.as_str()),
                error.error.message.as_str(),
            ),
            None => (None, body.trim()),
        };
        let error = classify(
            &Failure::Response {
                status,
                code,
                message,
                rate_limit_reset,
            },
            self.clock.now(),
        );
        tracing::debug!(status, code = code.unwrap_or("-"), %error, "Hetzner API error");
        error
    }

    fn transport(&self, error: &reqwest::Error) -> ProviderError {
        // reqwest's message names the URL, never the Authorization header.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        classify(
            &Failure::Transport {
                timed_out: error.is_timeout(),
                message,
            },
            self.clock.now(),
        )
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
