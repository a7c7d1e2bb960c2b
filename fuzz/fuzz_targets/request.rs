//! The client socket: every message a client sends on its control socket is decoded by
//! `Request::decode`. Never panics; what decodes encodes back to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_shm::proto::{MAX_SOCKET_MESSAGE_BYTES, Request};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_SOCKET_MESSAGE_BYTES {
        return;
    }
    if let Ok(request) = Request::decode(data) {
        let again = Request::decode(&request.encode()).expect("an encoded request decodes");
        assert_eq!(again, request);
    }
});
