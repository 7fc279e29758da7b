//! The cache's [`Source`] in production: the origins' `GET /internal/vod/{id}`
//! (`docs/vod.md`, "Origins"), through the edge's one peer client, which adds the
//! cluster secret (and the cluster's TLS when configured).
//!
//! Only maps HTTP answers to [`Answer`]s; which origin to ask, timeouts and what to
//! keep are the cache's.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use reqwest::StatusCode;

use super::cache::{Answer, Source};
use crate::peer::PeerClient;
use crate::vod::VodId;

/// The origins, in the edge's `--origins` order.
pub(crate) struct Origins {
    peers: PeerClient,
    origins: Arc<[SocketAddr]>,
}

impl Origins {
    pub(crate) fn new(peers: PeerClient, origins: Arc<[SocketAddr]>) -> Origins {
        Origins { peers, origins }
    }
}

/// The peer route's path for `id`.
pub(crate) fn vod_path(id: &VodId) -> String {
    format!("/internal/vod/{id}")
}

impl Source for Origins {
    fn origins(&self) -> usize {
        self.origins.len()
    }

    fn fetch(&self, at: usize, id: &VodId) -> BoxFuture<'static, Answer> {
        let Some(origin) = self.origins.get(at).copied() else {
            return Box::pin(async move { Answer::Failed(format!("no origin number {at}")) });
        };
        let request = self.peers.get(self.peers.url(origin, &vod_path(id))).send();
        Box::pin(async move {
            match request.await {
                Ok(res) => match res.status() {
                    StatusCode::OK => {
                        // A chunked body that ends without its last chunk, or one
                        // shorter than its Content-Length, is an error item here.
                        let chunks = res.bytes_stream().map(move |c| c.map_err(|e| format!("origin {origin}: {e}")));
                        Answer::Body(chunks.boxed())
                    }
                    StatusCode::NOT_FOUND => Answer::NotFound,
                    StatusCode::CONFLICT => Answer::Unfinished,
                    status => Answer::Failed(format!("origin {origin} answered {status}")),
                },
                Err(e) => Answer::Failed(format!("origin {origin}: {e}")),
            }
        })
    }
}
