//! One HTTP stream: runs the engine on request headers (pausing while the sidecar is
//! asked), adds the rate-limit headers to the response, and gives back what it holds
//! when it ends, however it ends.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::batch::{self, Finished};
use super::{abi, note_sidecar, now_ns, sidecar, Compiled, Hostcalls};
use crate::engine::{Held, Paused, Step, Verdict};
use crate::host_status::{self, OK};

pub(super) struct Stream {
    context_id: u32,
    compiled: Rc<Compiled>,
    response_headers: Vec<(&'static str, String)>,
    held: Vec<Held>,
    /// Waiting for the sidecar: the call's token and where to resume.
    paused: Option<(u32, Box<Paused>)>,
    /// Handed to this worker's batcher: the root resumes it and leaves a `Finished`.
    batched: bool,
    /// This request made an HTTP call of its own (see `Family::close_after_call`).
    called: bool,
}

/// Carries out a final verdict for the request of the current (or effective) context:
/// sends the rejection, or says to continue. Returns what the stream keeps.
///
/// `with_body: false` sends a rejection without its JSON body (status and headers
/// intact). Kong's engine (ngx_wasm_module at 3bed278) loses the whole reply when a
/// call that failed while waiting for its answer had a request body: the call's body
/// buffer is recycled into the reply and then marked consumed ("zero size buf in
/// writer"), and the client sees its connection closed. A reply without a body takes
/// no buffer, so it arrives.
pub(super) fn conclude(verdict: Verdict, details: &str, with_body: bool) -> (Action, Finished) {
    let mut finished = Finished {
        response_headers: Vec::new(),
        held: verdict.held,
    };
    let Some(rejection) = verdict.rejection else {
        finished.response_headers = verdict.response_headers;
        return (Action::Continue, finished);
    };
    let headers: Vec<(&str, &str)> = rejection
        .headers
        .iter()
        .filter(|(n, _)| with_body || *n != "content-type")
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let body = if with_body { rejection.body.as_bytes() } else { b"" };
    let status = abi::send_local_response(rejection.status, details, body, &headers);
    if status != OK {
        // The host could not answer for us; letting the request through is the only
        // way that does not hang the client.
        log::warn!(
            "rampart: local response failed ({}); request admitted",
            host_status::describe(status)
        );
        return (Action::Continue, finished);
    }
    (Action::Pause, finished)
}

impl Stream {
    pub(super) fn new(context_id: u32, compiled: Rc<Compiled>) -> Stream {
        Stream {
            context_id,
            compiled,
            response_headers: Vec::new(),
            held: Vec::new(),
            paused: None,
            batched: false,
            called: false,
        }
    }

    /// Takes what the root decided, if it resumed this request.
    fn collect(&mut self) {
        if !self.batched {
            return;
        }
        if let Some(f) = batch::take_finished(self.context_id) {
            self.response_headers = f.response_headers;
            self.held.extend(f.held);
        }
    }

    fn release(&mut self) {
        if self.batched {
            batch::forget(self.context_id);
            self.collect();
            self.batched = false;
        }
        let mut host = Hostcalls {
            compiled: &self.compiled,
        };
        if let Some((_, p)) = self.paused.take() {
            self.compiled.engine.abandon(&mut host, *p);
        }
        if !self.held.is_empty() {
            self.compiled.engine.release(&mut host, &mut self.held);
        }
    }

    /// Runs the engine one step: `Pause` while the sidecar is asked, `Continue` when
    /// admitted, `Pause` after sending a rejection. `resumed` is true when the request
    /// was paused before and must be continued explicitly.
    /// `with_body: false` after a call the host failed itself (see `conclude`).
    fn step(
        &mut self,
        answer: Option<(Box<Paused>, Option<crate::wire::Outcomes>)>,
        resumed: bool,
        with_body: bool,
    ) -> Action {
        let compiled = Rc::clone(&self.compiled);
        let mut host = Hostcalls { compiled: &compiled };
        let Ok(mut worker) = compiled.worker.try_borrow_mut() else {
            // Unreachable on a single-threaded VM; if a host ever re-enters, admit rather
            // than trap.
            return self.admit(resumed);
        };
        let mut step = match answer {
            None => compiled.engine.check(&mut host, &mut worker, now_ns()),
            Some((p, a)) => {
                note_sidecar(&mut worker, a.is_some());
                compiled.engine.resume(&mut host, &mut worker, *p, a, now_ns())
            }
        };
        loop {
            match step {
                Step::Done(verdict) => {
                    drop(worker);
                    let (action, finished) = conclude(verdict, compiled.family.reply_details(), with_body);
                    self.held = finished.held;
                    self.response_headers = finished.response_headers;
                    return match action {
                        Action::Continue => self.admit(resumed),
                        other => other,
                    };
                }
                Step::Ask(p, body) => {
                    let Some(sc) = compiled.engine.policy.sidecar.as_ref() else {
                        step = compiled.engine.resume(&mut host, &mut worker, *p, None, now_ns());
                        continue;
                    };
                    let (p, body) = match batch::submit(self.context_id, &compiled, p, body) {
                        Ok(()) => {
                            self.batched = true;
                            return Action::Pause;
                        }
                        Err(back) => back,
                    };
                    match sidecar::dispatch(sc, sidecar::CHECK_PATH, &body, sc.timeout_ms) {
                        Ok(token) => {
                            self.called = true;
                            self.paused = Some((token, p));
                            return Action::Pause;
                        }
                        Err(why) => {
                            if !worker.sidecar_failing {
                                log::warn!("rampart: {why}");
                            }
                            note_sidecar(&mut worker, false);
                            step = compiled.engine.resume(&mut host, &mut worker, *p, None, now_ns());
                        }
                    }
                }
            }
        }
    }

    fn admit(&self, resumed: bool) -> Action {
        if resumed {
            let _ = abi::continue_request();
        }
        Action::Continue
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some((expected, p)) = self.paused.take() else {
            return;
        };
        if expected != token {
            self.paused = Some((expected, p));
            return;
        }
        let reply = sidecar::reply(num_headers, body_size);
        self.step(Some((p, reply.outcomes())), true, !reply.engine_failure);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.step(None, false, true)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.collect();
        for (name, value) in &self.response_headers {
            let _ = abi::add_header(abi::MAP_RESPONSE_HEADERS, name, value);
        }
        if self.called && self.compiled.family.close_after_call() {
            let _ = abi::add_header(abi::MAP_RESPONSE_HEADERS, "connection", "close");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}

impl Drop for Stream {
    /// A stream that ends without `on_log` (hosts differ) still gives its slots back.
    fn drop(&mut self) {
        self.release();
    }
}
