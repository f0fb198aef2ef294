//! The PIN prompt of last resort: OpenSSL's own UI (`UI_new` + `UI_add_input_string` +
//! `UI_process`), which honours a UI method the application installed and otherwise reads the
//! terminal with echo off. Only tried when standard input is a terminal, so a daemon or a test
//! without one fails at once with "PIN required" instead of waiting.

use core::ffi::c_char;
use std::ffi::CString;

use zeroize::Zeroizing;

use crate::backend::PinFrom;
use crate::store::PinPrompt;
use crate::sys;

/// p11fwd's own terminal prompt as a [`PinPrompt`] (for key generation, which has no
/// application callback).
pub(crate) struct TerminalPrompt;

impl PinPrompt for TerminalPrompt {
    fn ask(&mut self, token: &str, final_try: bool) -> Option<(Zeroizing<String>, PinFrom)> {
        prompt(token, final_try).map(|pin| (pin, PinFrom::Typed))
    }
}

/// The longest PIN read.
const MAX_PIN: usize = 256;

/// Prompts `Enter PIN for <token>: ` and returns what was typed. On the token's final try the
/// prompt says so: `Enter PIN for <token> (final try: a wrong PIN locks it): `.
pub(crate) fn prompt(token: &str, final_try: bool) -> Option<Zeroizing<String>> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    let warning = if final_try {
        " (final try: a wrong PIN locks it)"
    } else {
        ""
    };
    let text = CString::new(format!("Enter PIN for {token}{warning}: ")).ok()?;
    let mut buf = Zeroizing::new(vec![0u8; MAX_PIN + 1]);
    // SAFETY: no preconditions; NULL on allocation failure.
    let ui = unsafe { sys::UI_new() };
    if ui.is_null() {
        return None;
    }
    // SAFETY: `ui` is live; `text` outlives the UI (freed below); `buf` has MAX_PIN + 1 bytes,
    // the room UI_add_input_string needs for `maxsize` = MAX_PIN plus the NUL.
    let added = unsafe {
        sys::UI_add_input_string(
            ui,
            text.as_ptr(),
            0,
            buf.as_mut_ptr().cast::<c_char>(),
            1,
            MAX_PIN as i32,
        )
    };
    // SAFETY: `ui` is live; it writes the answer into `buf`.
    let ok = added >= 0 && unsafe { sys::UI_process(ui) } == 0;
    // SAFETY: `ui` came from UI_new and is not used afterwards.
    unsafe { sys::UI_free(ui) };
    if !ok {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    let pin = core::str::from_utf8(&buf[..len]).ok()?;
    (!pin.is_empty()).then(|| Zeroizing::new(pin.to_owned()))
}
