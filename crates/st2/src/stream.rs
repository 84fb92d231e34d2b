//! `GET /stream/v1/stream`: StackStorm's server-sent events as a `Stream` of [`StreamEvent`]s.
//!
//! StackStorm keeps no replay: events sent while disconnected are lost. The stream ends (`None`)
//! when the server closes it; a caller that needs every change reconnects and re-lists.

use crate::client::St2Client;
use crate::error::{ErrorKind, Result, St2Error};
use crate::filter::StreamFilter;
use crate::model::StreamEvent;
use crate::sse::SseParser;
use futures::Stream;
use reqwest::Method;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Events from one stream connection. Ends after the server closes it, after an error item,
/// or when it stayed silent past the idle timeout (that last item is a `Timeout` error).
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>,
}

impl Stream for EventStream {
    type Item = Result<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    client: St2Client,
    call: String,
    resp: Option<reqwest::Response>,
    parser: SseParser,
    pending: VecDeque<StreamEvent>,
}

impl St2Client {
    /// Opens the event stream. Returns once StackStorm accepted the connection (errors before
    /// that, such as 401 or a refused connection, come back here, not from the stream).
    pub async fn stream(&self, filter: &StreamFilter) -> Result<EventStream> {
        let (call, url) = self.call_label(&Method::GET, "/stream/v1/stream");
        let query = filter.query();
        let connect = self.execute(&call, || {
            self.inner
                .http
                .get(&url)
                .query(&query)
                .header(reqwest::header::ACCEPT, "text/event-stream")
        });
        let resp = tokio::time::timeout(self.inner.timeout, connect)
            .await
            .map_err(|_| self.timeout_error(&call))??;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = tokio::time::timeout(self.inner.timeout, resp.bytes())
                .await
                .ok()
                .and_then(|b| b.ok())
                .unwrap_or_default();
            return Err(self.http_error(call, status, &body));
        }
        let state = State {
            client: self.clone(),
            call,
            resp: Some(resp),
            parser: SseParser::new(),
            pending: VecDeque::new(),
        };
        let events = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(ev) = st.pending.pop_front() {
                    return Some((Ok(ev), st));
                }
                let resp = st.resp.as_mut()?;
                let idle = st.client.stream_idle;
                match tokio::time::timeout(idle, resp.chunk()).await {
                    Ok(Ok(Some(chunk))) => st.pending.extend(st.parser.push(&chunk)),
                    Ok(Ok(None)) => return None,
                    Ok(Err(e)) => {
                        st.resp = None;
                        let err = st.client.reqwest_error(&st.call, e);
                        return Some((Err(err), st));
                    }
                    Err(_) => {
                        st.resp = None;
                        let detail = format!("stream silent for {idle:?} (no heartbeat)");
                        let err = St2Error::new(ErrorKind::Timeout, st.call.clone(), detail);
                        return Some((Err(err), st));
                    }
                }
            }
        });
        Ok(EventStream {
            inner: Box::pin(events),
        })
    }

    fn timeout_error(&self, call: &str) -> St2Error {
        let detail = format!("no answer within {:?}", self.inner.timeout);
        St2Error::new(ErrorKind::Timeout, call.to_owned(), detail)
    }
}
