//! Provisions a SoftHSM token for `p11fwd_tests::TestToken`; see `p11fwd_tests::provision`.

fn main() -> std::process::ExitCode {
    p11fwd_tests::provision::main()
}
