//! Who the client is: the peer address, or, when the peer is a trusted proxy
//! (`http.trusted_proxies`), the address it forwarded in `Forwarded` (RFC 7239) or,
//! without that header, `X-Forwarded-For`.
//!
//! The forwarded list is read from the right (the hop nearest to us): each trusted
//! proxy is skipped, and the first address that is not a trusted proxy is the client.
//! Addresses to its left were written by the client itself and are not believed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;

use super::server::Peer;
use crate::config::IpBlock;

/// The trusted proxies of `http.trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    blocks: Arc<[IpBlock]>,
}

impl TrustedProxies {
    /// The blocks of `http.trusted_proxies` (validated with the configuration; an
    /// invalid entry cannot reach here and is skipped).
    pub fn new(entries: &[String]) -> Self {
        Self {
            blocks: entries
                .iter()
                .filter_map(|e| IpBlock::parse(e).ok())
                .collect(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// The client's address of a request from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                // An address hidden or mangled by a proxy: the nearest trusted hop is
                // all that is known.
                None => return client,
                Some(ip) => {
                    client = *ip;
                    if !self.trusts(*ip) {
                        return client;
                    }
                }
            }
        }
        client
    }

    /// The filter extracting the client address (None without a peer, in unit tests).
    pub fn filter(&self) -> BoxedFilter<(Option<IpAddr>,)> {
        let peer = warp::ext::optional::<Peer>().map(|peer: Option<Peer>| peer.map(|p| p.0));
        if self.blocks.is_empty() {
            return peer
                .map(|peer: Option<SocketAddr>| peer.map(|p| p.ip()))
                .boxed();
        }
        let this = self.clone();
        peer.and(warp::header::headers_cloned())
            .map(move |peer: Option<SocketAddr>, headers: HeaderMap| {
                peer.map(|p| this.client(p.ip(), &headers))
            })
            .boxed()
    }
}

/// The forwarded addresses, leftmost (farthest) first: from `Forwarded` if the request
/// has one, else from `X-Forwarded-For`; every header line, in order. None for an entry
/// that is not an address (`unknown`, an obfuscated name).
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| node_address(value))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(node_address)
        .collect()
}

/// An address from `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:4711"` or `2001:db8::1`.
fn node_address(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    value.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(proxies.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".into()]);
        // The client claims 6.6.6.6; the first proxy saw 203.0.113.9, then 10.0.0.2.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let f = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https, for=10.1.1.1:80"#,
        )]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &f), ip("2001:db8::17"));
        // Forwarded wins over X-Forwarded-For.
        let both = headers(&[
            ("forwarded", "for=198.51.100.4"),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &both), ip("198.51.100.4"));
        // An unknown hop stops the walk at the nearest trusted proxy.
        let hidden = headers(&[("forwarded", "for=unknown, for=10.2.2.2")]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &hidden), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }
}
