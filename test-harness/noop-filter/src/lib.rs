//! The reference filters `make bench` measures Rampart against, in one wasm, chosen by
//! the plugin configuration:
//! - anything else: a filter that creates an HTTP context per request and does nothing.
//!   Whatever it costs is the floor every wasm filter pays on this host.
//! - `"trivial"`: the least a shared-data rate limiter can do per request: one read and
//!   one compare-and-swap of a single counter, one response header. No parsing, no
//!   keys, no limits.
//! - `"trivial+call"`: the same plus one HTTP call per request to the cluster
//!   `rampart_sidecar` (`GET /healthz`), the request paused until it answers: what the
//!   host's callout machinery alone costs a sync rate limiter.

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::time::Duration;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(Root { mode: Mode::Noop }));
    }}

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Noop,
        Trivial,
        TrivialCall,
    }

    struct Root {
        mode: Mode,
    }
    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            self.mode = match self.get_plugin_configuration().as_deref() {
                Some(b"trivial") => Mode::Trivial,
                Some(b"trivial+call") => Mode::TrivialCall,
                _ => Mode::Noop,
            };
            true
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            match self.mode {
                Mode::Noop => Some(Box::new(Noop)),
                mode => Some(Box::new(Trivial {
                    count: 0,
                    call: mode == Mode::TrivialCall,
                })),
            }
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Noop;
    impl Context for Noop {}
    impl HttpContext for Noop {}

    struct Trivial {
        count: u64,
        call: bool,
    }
    impl Context for Trivial {
        fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
            let _ = self.get_http_call_response_body(0, body_size);
            self.resume_http_request();
        }
    }
    impl HttpContext for Trivial {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            for _ in 0..8 {
                let (value, cas) = self.get_shared_data("trivial");
                let n = value
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                if self
                    .set_shared_data("trivial", Some(&(n + 1).to_le_bytes()), cas)
                    .is_ok()
                {
                    self.count = n + 1;
                    break;
                }
            }
            if self.call {
                let headers = vec![(":method", "GET"), (":path", "/healthz"), (":authority", "sidecar")];
                let sent =
                    self.dispatch_http_call("rampart_sidecar", headers, None, vec![], Duration::from_millis(250));
                if sent.is_ok() {
                    return Action::Pause;
                }
            }
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            self.add_http_response_header("x-count", &self.count.to_string());
            Action::Continue
        }
    }
}
