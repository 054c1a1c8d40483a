//! Any bytes a client or server sends: the classifier never panics, and
//! every error response mcpwarden builds parses back as a response with the
//! right id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwarden::proxy::message::{Message, error_response, parse};

fn check(msg: &Message) {
    match msg {
        Message::Request { id, .. } => {
            let reply = error_response(Some(id), -32001, "blocked", None);
            match parse(reply.as_bytes()) {
                Ok(Message::Response {
                    id: back,
                    is_error: true,
                }) => assert_eq!(&back, id),
                other => panic!("our error response {reply} parsed as {other:?}"),
            }
        }
        Message::Batch(items) => items.iter().for_each(check),
        Message::Notification { .. } | Message::Response { .. } => {}
    }
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(msg) => check(&msg),
        Err(e) => {
            let reply = error_response(None, e.code(), &e.to_string(), None);
            assert!(
                matches!(
                    parse(reply.as_bytes()),
                    Ok(Message::Response { is_error: true, .. })
                ),
                "our error response {reply} does not parse"
            );
        }
    }
});
