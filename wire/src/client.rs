//! A typed client: one method per PKCS#11 function, over a blocking [`Connection`].
//!
//! Requests are built by the functions in [`req`], so callers can also pipeline them with
//! [`Connection::call_batch`] and parse the replies with [`parse`]. Errors carry the call and
//! its CK_RV ([`Error::Rv`]).
//!
//! Output buffers follow PKCS#11 exactly: an [`OutCap`] says what the caller passed (a NULL
//! pointer for a size query, or a buffer of some length), and an [`Output`] says what came
//! back (data, or only a size: the answer to a size query or `CKR_BUFFER_TOO_SMALL`).

use std::path::Path;

use crate::consts::*;
use crate::error::{Error, ProtocolError, Result};
use crate::info::{Info, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use crate::message::Request;
use crate::transport::blocking::{Connection, Options};
use crate::value::{
    Arg, AttrSlot, Attribute, ByteArray, MechUpdate, Mechanism, UlongArray, ZERO_LENGTH_BUFFER,
};
use crate::{CallId, Dialect, Rv};

/// The most handles [`Client::find_all`] collects from one search.
pub const MAX_FOUND: usize = crate::value::MAX_ULONG_ARRAY as usize;

/// The handles of a `C_FindObjects` reply.
fn found_handles(args: Vec<Arg>) -> Result<Vec<u64>> {
    Ok(match parse::ulong_output(args)? {
        UlongOutput::Data(v) => v,
        UlongOutput::Size(_) => Vec::new(),
    })
}

/// The handshake string `C_Initialize` carries (rpc §6, id 1).
pub const HANDSHAKE: &[u8] = b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1";

/// The caller's output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutCap {
    /// A NULL pointer: a size query.
    Query,
    /// A buffer of this many bytes (or ulongs); 0 is a valid, empty buffer.
    Buffer(u64),
}

impl OutCap {
    /// The `fy` value for a server of `dialect` (rpc §4, §12 client 3).
    ///
    /// A non-NULL empty buffer is `0xFFFFFFFF` from 0.25 on. A 0.24 server would read that as
    /// 4 GiB, and `0` means a size query there, so we ask for 1 byte: any data that comes back
    /// is reported as `CKR_BUFFER_TOO_SMALL` by the caller's length check.
    pub fn fy(self, dialect: Dialect) -> u32 {
        match self {
            Self::Query => 0,
            Self::Buffer(0) if dialect.has_zero_length_marker() => ZERO_LENGTH_BUFFER,
            Self::Buffer(0) => 1,
            Self::Buffer(n) => u32::try_from(n)
                .unwrap_or(ZERO_LENGTH_BUFFER - 1)
                .min(ZERO_LENGTH_BUFFER - 1),
        }
    }

    /// The `fu` value (there is no marker for "non-NULL but empty"; 0 asks for the count).
    pub fn fu(self) -> u32 {
        match self {
            Self::Query => 0,
            Self::Buffer(n) => u32::try_from(n).unwrap_or(u32::MAX),
        }
    }
}

/// A byte-array output.
#[derive(Clone, PartialEq, Eq)]
pub enum Output {
    /// The data.
    Data(Vec<u8>),
    /// Only the length: the answer to a size query, or the size needed after
    /// `CKR_BUFFER_TOO_SMALL`.
    Size(u64),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Data(d) => write!(f, "Data({} bytes)", d.len()),
            Self::Size(n) => write!(f, "Size({n})"),
        }
    }
}

impl Output {
    fn from_array(a: ByteArray) -> Self {
        match a {
            ByteArray::Data(d) => Self::Data(d),
            // 0.25+ servers answer a size query of length 0 with `01 FFFFFFFF`.
            ByteArray::Null => Self::Size(0),
            ByteArray::Length(n) => Self::Size(n.into()),
        }
    }

    /// The data, or an error naming the call if only a size came back.
    pub fn into_data(self, call: CallId) -> Result<Vec<u8>> {
        match self {
            Self::Data(d) => Ok(d),
            Self::Size(_) => Err(Error::Rv {
                call,
                rv: Rv(CKR_BUFFER_TOO_SMALL),
            }),
        }
    }
}

/// A ulong-array output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UlongOutput {
    /// The values.
    Data(Vec<u64>),
    /// Only the count.
    Size(u64),
}

impl UlongOutput {
    fn from_array(a: UlongArray) -> Self {
        match a {
            UlongArray::Data(d) => Self::Data(d),
            UlongArray::Length(n) => Self::Size(n.into()),
        }
    }
}

fn input(data: Option<&[u8]>) -> Arg {
    Arg::ByteArray(match data {
        Some(d) => ByteArray::Data(d.to_vec()),
        None => ByteArray::Null,
    })
}

/// Request builders, one per call. They need the dialect only where the call id or the
/// buffer encoding depends on it.
pub mod req {
    use super::*;

    /// `C_Initialize`: the handshake, and `pReserved` (sent with its NUL) if given.
    pub fn initialize(reserved: Option<&[u8]>) -> Request {
        let mut r = reserved.map(<[u8]>::to_vec).unwrap_or_default();
        r.push(0);
        Request::new(
            CallId::Initialize,
            vec![
                Arg::ByteArray(ByteArray::Data(HANDSHAKE.to_vec())),
                Arg::Byte(u8::from(reserved.is_some())),
                Arg::ByteArray(ByteArray::Data(r)),
            ],
        )
    }
    /// `C_Finalize`
    pub fn finalize() -> Request {
        Request::new(CallId::Finalize, vec![])
    }
    /// `C_GetInfo`
    pub fn get_info() -> Request {
        Request::new(CallId::GetInfo, vec![])
    }
    /// `C_GetSlotList`
    pub fn get_slot_list(token_present: bool, cap: OutCap) -> Request {
        Request::new(
            CallId::GetSlotList,
            vec![
                Arg::Byte(u8::from(token_present)),
                Arg::UlongBuffer(cap.fu()),
            ],
        )
    }
    /// `C_GetSlotInfo`
    pub fn get_slot_info(slot: u64) -> Request {
        Request::new(CallId::GetSlotInfo, vec![Arg::Ulong(slot)])
    }
    /// `C_GetTokenInfo`
    pub fn get_token_info(slot: u64) -> Request {
        Request::new(CallId::GetTokenInfo, vec![Arg::Ulong(slot)])
    }
    /// `C_GetMechanismList`
    pub fn get_mechanism_list(slot: u64, cap: OutCap) -> Request {
        Request::new(
            CallId::GetMechanismList,
            vec![Arg::Ulong(slot), Arg::UlongBuffer(cap.fu())],
        )
    }
    /// `C_GetMechanismInfo`
    pub fn get_mechanism_info(slot: u64, mech: u64) -> Request {
        Request::new(
            CallId::GetMechanismInfo,
            vec![Arg::Ulong(slot), Arg::Ulong(mech)],
        )
    }
    /// `C_InitToken` (9, label as a C string) or `C_InitToken2` (88, 32-byte label).
    pub fn init_token(d: Dialect, slot: u64, pin: Option<&[u8]>, label: &[u8; 32]) -> Request {
        let last = if d.init_token_call() == CallId::InitToken2 {
            Arg::Space(label.to_vec())
        } else {
            Arg::Zstr(label.to_vec())
        };
        Request::new(
            d.init_token_call(),
            vec![Arg::Ulong(slot), input(pin), last],
        )
    }
    /// `C_OpenSession` (no application pointer or callback crosses the wire).
    pub fn open_session(slot: u64, flags: u64) -> Request {
        Request::new(
            CallId::OpenSession,
            vec![Arg::Ulong(slot), Arg::Ulong(flags)],
        )
    }
    /// `C_CloseSession`
    pub fn close_session(session: u64) -> Request {
        Request::new(CallId::CloseSession, vec![Arg::Ulong(session)])
    }
    /// `C_CloseAllSessions`
    pub fn close_all_sessions(slot: u64) -> Request {
        Request::new(CallId::CloseAllSessions, vec![Arg::Ulong(slot)])
    }
    /// `C_GetSessionInfo`
    pub fn get_session_info(session: u64) -> Request {
        Request::new(CallId::GetSessionInfo, vec![Arg::Ulong(session)])
    }
    /// `C_InitPIN`
    pub fn init_pin(session: u64, pin: Option<&[u8]>) -> Request {
        Request::new(CallId::InitPIN, vec![Arg::Ulong(session), input(pin)])
    }
    /// `C_SetPIN`
    pub fn set_pin(session: u64, old: Option<&[u8]>, new: Option<&[u8]>) -> Request {
        Request::new(
            CallId::SetPIN,
            vec![Arg::Ulong(session), input(old), input(new)],
        )
    }
    /// `C_GetOperationState`
    pub fn get_operation_state(d: Dialect, session: u64, cap: OutCap) -> Request {
        Request::new(
            CallId::GetOperationState,
            vec![Arg::Ulong(session), Arg::ByteBuffer(cap.fy(d))],
        )
    }
    /// `C_SetOperationState`
    pub fn set_operation_state(session: u64, state: &[u8], enc_key: u64, auth_key: u64) -> Request {
        Request::new(
            CallId::SetOperationState,
            vec![
                Arg::Ulong(session),
                input(Some(state)),
                Arg::Ulong(enc_key),
                Arg::Ulong(auth_key),
            ],
        )
    }
    /// `C_Login` (a NULL PIN for a protected authentication path).
    pub fn login(session: u64, user_type: u64, pin: Option<&[u8]>) -> Request {
        Request::new(
            CallId::Login,
            vec![Arg::Ulong(session), Arg::Ulong(user_type), input(pin)],
        )
    }
    /// `C_Logout`
    pub fn logout(session: u64) -> Request {
        Request::new(CallId::Logout, vec![Arg::Ulong(session)])
    }
    /// `C_CreateObject`
    pub fn create_object(session: u64, template: Vec<Attribute>) -> Request {
        Request::new(
            CallId::CreateObject,
            vec![Arg::Ulong(session), Arg::Attributes(template)],
        )
    }
    /// `C_CopyObject`
    pub fn copy_object(session: u64, object: u64, template: Vec<Attribute>) -> Request {
        Request::new(
            CallId::CopyObject,
            vec![
                Arg::Ulong(session),
                Arg::Ulong(object),
                Arg::Attributes(template),
            ],
        )
    }
    /// `C_DestroyObject`
    pub fn destroy_object(session: u64, object: u64) -> Request {
        Request::new(
            CallId::DestroyObject,
            vec![Arg::Ulong(session), Arg::Ulong(object)],
        )
    }
    /// `C_GetObjectSize`
    pub fn get_object_size(session: u64, object: u64) -> Request {
        Request::new(
            CallId::GetObjectSize,
            vec![Arg::Ulong(session), Arg::Ulong(object)],
        )
    }
    /// `C_GetAttributeValue`
    pub fn get_attribute_value(session: u64, object: u64, template: Vec<AttrSlot>) -> Request {
        Request::new(
            CallId::GetAttributeValue,
            vec![
                Arg::Ulong(session),
                Arg::Ulong(object),
                Arg::AttrBuffer(template),
            ],
        )
    }
    /// `C_SetAttributeValue`
    pub fn set_attribute_value(session: u64, object: u64, template: Vec<Attribute>) -> Request {
        Request::new(
            CallId::SetAttributeValue,
            vec![
                Arg::Ulong(session),
                Arg::Ulong(object),
                Arg::Attributes(template),
            ],
        )
    }
    /// `C_FindObjectsInit`
    pub fn find_objects_init(session: u64, template: Vec<Attribute>) -> Request {
        Request::new(
            CallId::FindObjectsInit,
            vec![Arg::Ulong(session), Arg::Attributes(template)],
        )
    }
    /// `C_FindObjects`
    pub fn find_objects(session: u64, max: u32) -> Request {
        Request::new(
            CallId::FindObjects,
            vec![Arg::Ulong(session), Arg::UlongBuffer(max)],
        )
    }
    /// `C_FindObjectsFinal`
    pub fn find_objects_final(session: u64) -> Request {
        Request::new(CallId::FindObjectsFinal, vec![Arg::Ulong(session)])
    }
    /// An `*Init` call with a mechanism and a key (`uMu`): EncryptInit, DecryptInit, SignInit,
    /// SignRecoverInit, VerifyInit, VerifyRecoverInit and the Message*Init calls. `None` is the
    /// NULL mechanism (a cancel).
    pub fn init_with_key(call: CallId, session: u64, mech: Option<Mechanism>, key: u64) -> Request {
        Request::new(
            call,
            vec![Arg::Ulong(session), Arg::Mechanism(mech), Arg::Ulong(key)],
        )
    }
    /// `C_DigestInit`
    pub fn digest_init(session: u64, mech: Option<Mechanism>) -> Request {
        Request::new(
            CallId::DigestInit,
            vec![Arg::Ulong(session), Arg::Mechanism(mech)],
        )
    }
    /// A one-input, one-output call (`uayfy` → `ay`): Encrypt, EncryptUpdate, Decrypt,
    /// DecryptUpdate, Digest, Sign, SignRecover, VerifyRecover and the dual-function updates.
    pub fn data_in_out(
        d: Dialect,
        call: CallId,
        session: u64,
        data: &[u8],
        cap: OutCap,
    ) -> Request {
        Request::new(
            call,
            vec![
                Arg::Ulong(session),
                input(Some(data)),
                Arg::ByteBuffer(cap.fy(d)),
            ],
        )
    }
    /// A one-input call (`uay`): DigestUpdate, SignUpdate, VerifyUpdate, VerifyFinal,
    /// SeedRandom, SignMessageBegin, VerifyMessageBegin.
    pub fn data_in(call: CallId, session: u64, data: &[u8]) -> Request {
        Request::new(call, vec![Arg::Ulong(session), input(Some(data))])
    }
    /// A final call (`ufy` → `ay`): EncryptFinal, DecryptFinal, DigestFinal, SignFinal,
    /// GenerateRandom.
    pub fn data_out(d: Dialect, call: CallId, session: u64, cap: OutCap) -> Request {
        Request::new(call, vec![Arg::Ulong(session), Arg::ByteBuffer(cap.fy(d))])
    }
    /// `C_DigestKey`
    pub fn digest_key(session: u64, key: u64) -> Request {
        Request::new(
            CallId::DigestKey,
            vec![Arg::Ulong(session), Arg::Ulong(key)],
        )
    }
    /// `C_Verify`
    pub fn verify(session: u64, data: &[u8], signature: &[u8]) -> Request {
        Request::new(
            CallId::Verify,
            vec![
                Arg::Ulong(session),
                input(Some(data)),
                input(Some(signature)),
            ],
        )
    }
    /// `C_GenerateKey`
    pub fn generate_key(session: u64, mech: Mechanism, template: Vec<Attribute>) -> Request {
        Request::new(
            CallId::GenerateKey,
            vec![
                Arg::Ulong(session),
                Arg::Mechanism(Some(mech)),
                Arg::Attributes(template),
            ],
        )
    }
    /// `C_GenerateKeyPair`
    pub fn generate_key_pair(
        session: u64,
        mech: Mechanism,
        public: Vec<Attribute>,
        private: Vec<Attribute>,
    ) -> Request {
        Request::new(
            CallId::GenerateKeyPair,
            vec![
                Arg::Ulong(session),
                Arg::Mechanism(Some(mech)),
                Arg::Attributes(public),
                Arg::Attributes(private),
            ],
        )
    }
    /// `C_WrapKey`
    pub fn wrap_key(
        d: Dialect,
        session: u64,
        mech: Mechanism,
        wrapping_key: u64,
        key: u64,
        cap: OutCap,
    ) -> Request {
        Request::new(
            CallId::WrapKey,
            vec![
                Arg::Ulong(session),
                Arg::Mechanism(Some(mech)),
                Arg::Ulong(wrapping_key),
                Arg::Ulong(key),
                Arg::ByteBuffer(cap.fy(d)),
            ],
        )
    }
    /// `C_UnwrapKey`
    pub fn unwrap_key(
        session: u64,
        mech: Mechanism,
        unwrapping_key: u64,
        wrapped: &[u8],
        template: Vec<Attribute>,
    ) -> Request {
        Request::new(
            CallId::UnwrapKey,
            vec![
                Arg::Ulong(session),
                Arg::Mechanism(Some(mech)),
                Arg::Ulong(unwrapping_key),
                input(Some(wrapped)),
                Arg::Attributes(template),
            ],
        )
    }
    /// `C_DeriveKey` (62) or `C_DeriveKey2` (89), by dialect.
    pub fn derive_key(
        d: Dialect,
        session: u64,
        mech: Mechanism,
        base: u64,
        template: Vec<Attribute>,
    ) -> Request {
        Request::new(
            d.derive_key_call(),
            vec![
                Arg::Ulong(session),
                Arg::Mechanism(Some(mech)),
                Arg::Ulong(base),
                Arg::Attributes(template),
            ],
        )
    }
    /// `C_WaitForSlotEvent`
    pub fn wait_for_slot_event(flags: u64) -> Request {
        Request::new(CallId::WaitForSlotEvent, vec![Arg::Ulong(flags)])
    }
    /// `C_LoginUser`
    pub fn login_user(
        session: u64,
        user_type: u64,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Request {
        Request::new(
            CallId::LoginUser,
            vec![
                Arg::Ulong(session),
                Arg::Ulong(user_type),
                input(pin),
                input(Some(username)),
            ],
        )
    }
    /// `C_SessionCancel`
    pub fn session_cancel(session: u64, flags: u64) -> Request {
        Request::new(
            CallId::SessionCancel,
            vec![Arg::Ulong(session), Arg::Ulong(flags)],
        )
    }
    /// `C_EncryptMessage` / `C_DecryptMessage` (`uayayayfy`): parameter, associated data,
    /// input, output capacity. The parameter crosses as raw native bytes (rpc §6).
    pub fn crypt_message(
        d: Dialect,
        call: CallId,
        session: u64,
        param: &[u8],
        aad: &[u8],
        data: &[u8],
        cap: OutCap,
    ) -> Request {
        Request::new(
            call,
            vec![
                Arg::Ulong(session),
                input(Some(param)),
                input(Some(aad)),
                input(Some(data)),
                Arg::ByteBuffer(cap.fy(d)),
            ],
        )
    }
    /// `C_EncryptMessageBegin` / `C_DecryptMessageBegin` (`uayay`).
    pub fn crypt_message_begin(call: CallId, session: u64, param: &[u8], aad: &[u8]) -> Request {
        Request::new(
            call,
            vec![Arg::Ulong(session), input(Some(param)), input(Some(aad))],
        )
    }
    /// `C_EncryptMessageNext` / `C_DecryptMessageNext` (`uayayfyu`).
    pub fn crypt_message_next(
        d: Dialect,
        call: CallId,
        session: u64,
        param: &[u8],
        part: &[u8],
        cap: OutCap,
        flags: u64,
    ) -> Request {
        Request::new(
            call,
            vec![
                Arg::Ulong(session),
                input(Some(param)),
                input(Some(part)),
                Arg::ByteBuffer(cap.fy(d)),
                Arg::Ulong(flags),
            ],
        )
    }
    /// A `u`-only call: MessageEncryptFinal, MessageDecryptFinal, MessageSignFinal,
    /// MessageVerifyFinal (and the session calls above).
    pub fn session_only(call: CallId, session: u64) -> Request {
        Request::new(call, vec![Arg::Ulong(session)])
    }
    /// `C_SignMessage` (`uayayfy`).
    pub fn sign_message(
        d: Dialect,
        session: u64,
        param: &[u8],
        data: &[u8],
        cap: OutCap,
    ) -> Request {
        Request::new(
            CallId::SignMessage,
            vec![
                Arg::Ulong(session),
                input(Some(param)),
                input(Some(data)),
                Arg::ByteBuffer(cap.fy(d)),
            ],
        )
    }
    /// `C_SignMessageNext` (`uayayyfy`): `want_signature` says whether this is the last part.
    pub fn sign_message_next(
        d: Dialect,
        session: u64,
        param: &[u8],
        data: &[u8],
        want_signature: bool,
        cap: OutCap,
    ) -> Request {
        Request::new(
            CallId::SignMessageNext,
            vec![
                Arg::Ulong(session),
                input(Some(param)),
                input(Some(data)),
                Arg::Byte(u8::from(want_signature)),
                Arg::ByteBuffer(cap.fy(d)),
            ],
        )
    }
    /// `C_VerifyMessage` / `C_VerifyMessageNext` (`uayayay`): parameter, data, signature.
    pub fn verify_message(
        call: CallId,
        session: u64,
        param: &[u8],
        data: &[u8],
        signature: &[u8],
    ) -> Request {
        Request::new(
            call,
            vec![
                Arg::Ulong(session),
                input(Some(param)),
                input(Some(data)),
                input(Some(signature)),
            ],
        )
    }
}

/// Reply parsers: turn a reply's arguments into typed values.
pub mod parse {
    use super::*;

    fn mismatch(sig: &'static str) -> Error {
        Error::Protocol(ProtocolError::ArgumentMismatch(sig))
    }

    /// No outputs.
    pub fn unit(args: Vec<Arg>) -> Result<()> {
        if args.is_empty() {
            Ok(())
        } else {
            Err(mismatch(""))
        }
    }
    /// One `u`.
    pub fn ulong(args: Vec<Arg>) -> Result<u64> {
        match args.as_slice() {
            [Arg::Ulong(u)] => Ok(*u),
            _ => Err(mismatch("u")),
        }
    }
    /// Two `u`s.
    pub fn ulong_pair(args: Vec<Arg>) -> Result<(u64, u64)> {
        match args.as_slice() {
            [Arg::Ulong(a), Arg::Ulong(b)] => Ok((*a, *b)),
            _ => Err(mismatch("uu")),
        }
    }
    /// One `ay`.
    pub fn output(args: Vec<Arg>) -> Result<Output> {
        match args.into_iter().next() {
            Some(Arg::ByteArray(a)) => Ok(Output::from_array(a)),
            _ => Err(mismatch("ay")),
        }
    }
    /// One `au`.
    pub fn ulong_output(args: Vec<Arg>) -> Result<UlongOutput> {
        match args.into_iter().next() {
            Some(Arg::UlongArray(a)) => Ok(UlongOutput::from_array(a)),
            _ => Err(mismatch("au")),
        }
    }
    /// `aAu`: the template and the module's CK_RV (OK, SENSITIVE, TYPE_INVALID or
    /// BUFFER_TOO_SMALL; rpc §3.2).
    pub fn attributes(args: Vec<Arg>) -> Result<(Vec<Attribute>, Rv)> {
        let mut it = args.into_iter();
        match (it.next(), it.next()) {
            (Some(Arg::Attributes(a)), Some(Arg::Ulong(rv))) => Ok((a, Rv(rv))),
            _ => Err(mismatch("aAu")),
        }
    }
    /// `uPu` (C_DeriveKey2): the CK_RV, the parameter update, and the key if OK.
    pub fn derive2(args: Vec<Arg>) -> Result<(Rv, MechUpdate, Option<u64>)> {
        let mut it = args.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(Arg::Ulong(rv)), Some(Arg::MechUpdate(u)), key) => {
                let key = match key {
                    Some(Arg::Ulong(k)) => Some(k),
                    None => None,
                    Some(_) => return Err(mismatch("uPu")),
                };
                Ok((Rv(rv), u, key))
            }
            _ => Err(mismatch("uPu")),
        }
    }
}

/// The typed client.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
}

impl Client {
    /// Wrap a connection.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Connect to the server at `path` (see [`Connection::connect`]).
    pub fn connect(path: &Path, opts: Options) -> Result<Self> {
        Ok(Self::new(Connection::connect(path, opts)?))
    }

    /// Connect, negotiate the version and send the RPC `C_Initialize` in the same write as the
    /// version byte: one round trip instead of two (see [`Connection::connect_with`]).
    pub fn connect_initialized(
        path: &Path,
        opts: Options,
        reserved: Option<&[u8]>,
    ) -> Result<Self> {
        let (conn, mut replies) =
            Connection::connect_with(path, opts, &[req::initialize(reserved)])?;
        match replies.pop() {
            Some(r) => parse::unit(r?)?,
            None => return Err(Error::Closed),
        }
        Ok(Self::new(conn))
    }

    /// The connection, e.g. to pipeline requests.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The negotiated dialect.
    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    fn call(&self, r: Request) -> Result<Vec<Arg>> {
        self.conn.call(&r)
    }

    /// `C_Initialize` over RPC: the handshake and an optional `pReserved` string.
    pub fn initialize(&self, reserved: Option<&[u8]>) -> Result<()> {
        parse::unit(self.call(req::initialize(reserved))?)
    }
    /// `C_Finalize`
    pub fn finalize(&self) -> Result<()> {
        parse::unit(self.call(req::finalize())?)
    }
    /// `C_GetInfo`
    pub fn get_info(&self) -> Result<Info> {
        Ok(Info::from_args(self.call(req::get_info())?)?)
    }
    /// `C_GetSlotList`
    pub fn get_slot_list(&self, token_present: bool, cap: OutCap) -> Result<UlongOutput> {
        parse::ulong_output(self.call(req::get_slot_list(token_present, cap))?)
    }
    /// All slot ids (asks with room for 64, then for exactly as many as there are).
    pub fn slots(&self, token_present: bool) -> Result<Vec<u64>> {
        self.ulong_list(
            |cap| req::get_slot_list(token_present, cap),
            CallId::GetSlotList,
        )
    }
    /// `C_GetSlotInfo`
    pub fn get_slot_info(&self, slot: u64) -> Result<SlotInfo> {
        Ok(SlotInfo::from_args(self.call(req::get_slot_info(slot))?)?)
    }
    /// `C_GetTokenInfo`
    pub fn get_token_info(&self, slot: u64) -> Result<TokenInfo> {
        Ok(TokenInfo::from_args(self.call(req::get_token_info(slot))?)?)
    }
    /// `C_GetMechanismList`
    pub fn get_mechanism_list(&self, slot: u64, cap: OutCap) -> Result<UlongOutput> {
        parse::ulong_output(self.call(req::get_mechanism_list(slot, cap))?)
    }
    /// All mechanisms of a slot.
    pub fn mechanisms(&self, slot: u64) -> Result<Vec<u64>> {
        self.ulong_list(
            |cap| req::get_mechanism_list(slot, cap),
            CallId::GetMechanismList,
        )
    }
    fn ulong_list(&self, build: impl Fn(OutCap) -> Request, call: CallId) -> Result<Vec<u64>> {
        let mut cap = 256;
        for _ in 0..4 {
            match parse::ulong_output(self.call(build(OutCap::Buffer(cap)))?)? {
                UlongOutput::Data(v) => return Ok(v),
                UlongOutput::Size(n) => cap = n.max(cap + 1),
            }
        }
        Err(Error::Rv {
            call,
            rv: Rv(CKR_BUFFER_TOO_SMALL),
        })
    }
    /// `C_GetMechanismInfo`
    pub fn get_mechanism_info(&self, slot: u64, mech: u64) -> Result<MechanismInfo> {
        Ok(MechanismInfo::from_args(
            self.call(req::get_mechanism_info(slot, mech))?,
        )?)
    }
    /// `C_InitToken` / `C_InitToken2`
    pub fn init_token(&self, slot: u64, pin: Option<&[u8]>, label: &[u8; 32]) -> Result<()> {
        parse::unit(self.call(req::init_token(self.dialect(), slot, pin, label))?)
    }
    /// `C_OpenSession`
    pub fn open_session(&self, slot: u64, flags: u64) -> Result<u64> {
        parse::ulong(self.call(req::open_session(slot, flags))?)
    }
    /// `C_CloseSession`
    pub fn close_session(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::close_session(session))?)
    }
    /// `C_CloseAllSessions`
    pub fn close_all_sessions(&self, slot: u64) -> Result<()> {
        parse::unit(self.call(req::close_all_sessions(slot))?)
    }
    /// `C_GetSessionInfo`
    pub fn get_session_info(&self, session: u64) -> Result<SessionInfo> {
        Ok(SessionInfo::from_args(
            self.call(req::get_session_info(session))?,
        )?)
    }
    /// `C_InitPIN`
    pub fn init_pin(&self, session: u64, pin: Option<&[u8]>) -> Result<()> {
        parse::unit(self.call(req::init_pin(session, pin))?)
    }
    /// `C_SetPIN`
    pub fn set_pin(&self, session: u64, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        parse::unit(self.call(req::set_pin(session, old, new))?)
    }
    /// `C_GetOperationState`
    pub fn get_operation_state(&self, session: u64, cap: OutCap) -> Result<Output> {
        parse::output(self.call(req::get_operation_state(self.dialect(), session, cap))?)
    }
    /// `C_SetOperationState`
    pub fn set_operation_state(
        &self,
        session: u64,
        state: &[u8],
        enc_key: u64,
        auth_key: u64,
    ) -> Result<()> {
        parse::unit(self.call(req::set_operation_state(session, state, enc_key, auth_key))?)
    }
    /// `C_Login`
    pub fn login(&self, session: u64, user_type: u64, pin: Option<&[u8]>) -> Result<()> {
        parse::unit(self.call(req::login(session, user_type, pin))?)
    }
    /// `C_Logout`
    pub fn logout(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::logout(session))?)
    }
    /// `C_CreateObject`
    pub fn create_object(&self, session: u64, template: Vec<Attribute>) -> Result<u64> {
        parse::ulong(self.call(req::create_object(session, template))?)
    }
    /// `C_CopyObject`
    pub fn copy_object(&self, session: u64, object: u64, template: Vec<Attribute>) -> Result<u64> {
        parse::ulong(self.call(req::copy_object(session, object, template))?)
    }
    /// `C_DestroyObject`
    pub fn destroy_object(&self, session: u64, object: u64) -> Result<()> {
        parse::unit(self.call(req::destroy_object(session, object))?)
    }
    /// `C_GetObjectSize`
    pub fn get_object_size(&self, session: u64, object: u64) -> Result<u64> {
        parse::ulong(self.call(req::get_object_size(session, object))?)
    }
    /// `C_GetAttributeValue`: the template as the module filled it, and its CK_RV.
    pub fn get_attribute_value(
        &self,
        session: u64,
        object: u64,
        template: Vec<AttrSlot>,
    ) -> Result<(Vec<Attribute>, Rv)> {
        parse::attributes(self.call(req::get_attribute_value(session, object, template))?)
    }
    /// Fetch attribute values without size queries: each is asked with room for `hint`
    /// bytes, and those that did not fit are asked again with their exact size.
    pub fn attributes(
        &self,
        session: u64,
        object: u64,
        types: &[u64],
        hint: u32,
    ) -> Result<Vec<Attribute>> {
        let slots = types
            .iter()
            .map(|t| AttrSlot {
                ty: *t,
                buflen: hint,
                nested: None,
            })
            .collect();
        let (mut attrs, _) = self.get_attribute_value(session, object, slots)?;
        let retry: Vec<usize> = attrs
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.native_len().is_some_and(|l| l > hint)
                    && matches!(a.value(), Some(crate::Value::Bytes(None)))
            })
            .map(|(i, _)| i)
            .collect();
        if !retry.is_empty() {
            let slots = retry
                .iter()
                .map(|i| AttrSlot {
                    ty: attrs[*i].ty,
                    buflen: attrs[*i].native_len().unwrap_or(0),
                    nested: None,
                })
                .collect();
            let (again, _) = self.get_attribute_value(session, object, slots)?;
            for (i, a) in retry.into_iter().zip(again) {
                attrs[i] = a;
            }
        }
        Ok(attrs)
    }
    /// `C_SetAttributeValue`
    pub fn set_attribute_value(
        &self,
        session: u64,
        object: u64,
        template: Vec<Attribute>,
    ) -> Result<()> {
        parse::unit(self.call(req::set_attribute_value(session, object, template))?)
    }
    /// `C_FindObjectsInit`
    pub fn find_objects_init(&self, session: u64, template: Vec<Attribute>) -> Result<()> {
        parse::unit(self.call(req::find_objects_init(session, template))?)
    }
    /// `C_FindObjects`
    pub fn find_objects(&self, session: u64, max: u32) -> Result<Vec<u64>> {
        found_handles(self.call(req::find_objects(session, max))?)
    }
    /// `C_FindObjectsFinal`
    pub fn find_objects_final(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::find_objects_final(session))?)
    }
    /// Every object matching `template`: `C_FindObjectsInit`, `C_FindObjects` of up to `max`
    /// handles until one returns none (a module may return fewer than `max` before the end),
    /// `C_FindObjectsFinal`.
    ///
    /// Init, two finds and Final go out in one batch, so a search that ends within the first
    /// `max` handles costs one round trip. When the second find returns handles as well, the
    /// search is run again, one find at a time until one comes back empty. More than
    /// [`MAX_FOUND`] handles in all is an error (a server that never ends the search).
    pub fn find_all(&self, session: u64, template: Vec<Attribute>, max: u32) -> Result<Vec<u64>> {
        let max = max.max(1);
        let mut results = self
            .conn
            .call_batch(&[
                req::find_objects_init(session, template.clone()),
                req::find_objects(session, max),
                req::find_objects(session, max),
                req::find_objects_final(session),
            ])
            .into_iter();
        let (Some(init), Some(first), Some(second), Some(fin)) = (
            results.next(),
            results.next(),
            results.next(),
            results.next(),
        ) else {
            return Err(Error::Invalid("batch size"));
        };
        parse::unit(init?)?;
        let found = found_handles(first?)?;
        let more = found_handles(second?)?;
        parse::unit(fin?)?;
        if more.is_empty() {
            return Ok(found);
        }
        self.find_objects_init(session, template)?;
        let all = (|| {
            let mut all = Vec::new();
            loop {
                let batch = self.find_objects(session, max)?;
                if batch.is_empty() {
                    return Ok(all);
                }
                all.extend(batch);
                if all.len() > MAX_FOUND {
                    return Err(Error::Protocol(ProtocolError::BadValue(
                        "C_FindObjects never ends",
                    )));
                }
            }
        })();
        let fin = self.find_objects_final(session);
        let all = all?;
        fin?;
        Ok(all)
    }
    /// `C_EncryptInit`
    pub fn encrypt_init(&self, session: u64, mech: Option<Mechanism>, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(CallId::EncryptInit, session, mech, key))?)
    }
    /// `C_Encrypt`
    pub fn encrypt(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::Encrypt, session, data, cap)
    }
    /// `C_EncryptUpdate`
    pub fn encrypt_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::EncryptUpdate, session, data, cap)
    }
    /// `C_EncryptFinal`
    pub fn encrypt_final(&self, session: u64, cap: OutCap) -> Result<Output> {
        self.out(CallId::EncryptFinal, session, cap)
    }
    /// `C_DecryptInit`
    pub fn decrypt_init(&self, session: u64, mech: Option<Mechanism>, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(CallId::DecryptInit, session, mech, key))?)
    }
    /// `C_Decrypt`
    pub fn decrypt(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::Decrypt, session, data, cap)
    }
    /// `C_DecryptUpdate`
    pub fn decrypt_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::DecryptUpdate, session, data, cap)
    }
    /// `C_DecryptFinal`
    pub fn decrypt_final(&self, session: u64, cap: OutCap) -> Result<Output> {
        self.out(CallId::DecryptFinal, session, cap)
    }
    /// `C_DigestInit`
    pub fn digest_init(&self, session: u64, mech: Option<Mechanism>) -> Result<()> {
        parse::unit(self.call(req::digest_init(session, mech))?)
    }
    /// `C_Digest`
    pub fn digest(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::Digest, session, data, cap)
    }
    /// `C_DigestUpdate`
    pub fn digest_update(&self, session: u64, data: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::DigestUpdate, session, data))?)
    }
    /// `C_DigestKey`
    pub fn digest_key(&self, session: u64, key: u64) -> Result<()> {
        parse::unit(self.call(req::digest_key(session, key))?)
    }
    /// `C_DigestFinal`
    pub fn digest_final(&self, session: u64, cap: OutCap) -> Result<Output> {
        self.out(CallId::DigestFinal, session, cap)
    }
    /// `C_SignInit`
    pub fn sign_init(&self, session: u64, mech: Option<Mechanism>, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(CallId::SignInit, session, mech, key))?)
    }
    /// `C_Sign`
    pub fn sign(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::Sign, session, data, cap)
    }
    /// `C_SignUpdate`
    pub fn sign_update(&self, session: u64, data: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::SignUpdate, session, data))?)
    }
    /// `C_SignFinal`
    pub fn sign_final(&self, session: u64, cap: OutCap) -> Result<Output> {
        self.out(CallId::SignFinal, session, cap)
    }
    /// `C_SignRecoverInit`
    pub fn sign_recover_init(&self, session: u64, mech: Option<Mechanism>, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::SignRecoverInit,
            session,
            mech,
            key,
        ))?)
    }
    /// `C_SignRecover`
    pub fn sign_recover(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::SignRecover, session, data, cap)
    }
    /// `C_VerifyInit`
    pub fn verify_init(&self, session: u64, mech: Option<Mechanism>, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(CallId::VerifyInit, session, mech, key))?)
    }
    /// `C_Verify`
    pub fn verify(&self, session: u64, data: &[u8], signature: &[u8]) -> Result<()> {
        parse::unit(self.call(req::verify(session, data, signature))?)
    }
    /// `C_VerifyUpdate`
    pub fn verify_update(&self, session: u64, data: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::VerifyUpdate, session, data))?)
    }
    /// `C_VerifyFinal`
    pub fn verify_final(&self, session: u64, signature: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::VerifyFinal, session, signature))?)
    }
    /// `C_VerifyRecoverInit`
    pub fn verify_recover_init(
        &self,
        session: u64,
        mech: Option<Mechanism>,
        key: u64,
    ) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::VerifyRecoverInit,
            session,
            mech,
            key,
        ))?)
    }
    /// `C_VerifyRecover`
    pub fn verify_recover(&self, session: u64, signature: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::VerifyRecover, session, signature, cap)
    }
    /// `C_DigestEncryptUpdate`
    pub fn digest_encrypt_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::DigestEncryptUpdate, session, data, cap)
    }
    /// `C_DecryptDigestUpdate`
    pub fn decrypt_digest_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::DecryptDigestUpdate, session, data, cap)
    }
    /// `C_SignEncryptUpdate`
    pub fn sign_encrypt_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::SignEncryptUpdate, session, data, cap)
    }
    /// `C_DecryptVerifyUpdate`
    pub fn decrypt_verify_update(&self, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        self.in_out(CallId::DecryptVerifyUpdate, session, data, cap)
    }
    /// `C_GenerateKey`
    pub fn generate_key(
        &self,
        session: u64,
        mech: Mechanism,
        template: Vec<Attribute>,
    ) -> Result<u64> {
        parse::ulong(self.call(req::generate_key(session, mech, template))?)
    }
    /// `C_GenerateKeyPair`: (public, private).
    pub fn generate_key_pair(
        &self,
        session: u64,
        mech: Mechanism,
        public: Vec<Attribute>,
        private: Vec<Attribute>,
    ) -> Result<(u64, u64)> {
        parse::ulong_pair(self.call(req::generate_key_pair(session, mech, public, private))?)
    }
    /// `C_WrapKey`
    pub fn wrap_key(
        &self,
        session: u64,
        mech: Mechanism,
        wrapping_key: u64,
        key: u64,
        cap: OutCap,
    ) -> Result<Output> {
        parse::output(self.call(req::wrap_key(
            self.dialect(),
            session,
            mech,
            wrapping_key,
            key,
            cap,
        ))?)
    }
    /// `C_UnwrapKey`
    pub fn unwrap_key(
        &self,
        session: u64,
        mech: Mechanism,
        unwrapping_key: u64,
        wrapped: &[u8],
        template: Vec<Attribute>,
    ) -> Result<u64> {
        parse::ulong(self.call(req::unwrap_key(
            session,
            mech,
            unwrapping_key,
            wrapped,
            template,
        ))?)
    }
    /// `C_DeriveKey` (or `C_DeriveKey2` at version 2): the new key, and the parameter update
    /// the server wrote back (version 2 only).
    pub fn derive_key(
        &self,
        session: u64,
        mech: Mechanism,
        base: u64,
        template: Vec<Attribute>,
    ) -> Result<(u64, Option<MechUpdate>)> {
        let r = req::derive_key(self.dialect(), session, mech, base, template);
        let call = r.call;
        let args = self.call(r)?;
        if call == CallId::DeriveKey2 {
            let (rv, update, key) = parse::derive2(args)?;
            match key {
                Some(k) if rv.is_ok() => Ok((k, Some(update))),
                _ => Err(Error::Rv {
                    call,
                    rv: if rv.is_ok() { Rv(CKR_DEVICE_ERROR) } else { rv },
                }),
            }
        } else {
            Ok((parse::ulong(args)?, None))
        }
    }
    /// `C_SeedRandom`
    pub fn seed_random(&self, session: u64, seed: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::SeedRandom, session, seed))?)
    }
    /// `C_GenerateRandom`
    pub fn generate_random(&self, session: u64, cap: OutCap) -> Result<Output> {
        self.out(CallId::GenerateRandom, session, cap)
    }
    /// `C_WaitForSlotEvent`
    pub fn wait_for_slot_event(&self, flags: u64) -> Result<u64> {
        parse::ulong(self.call(req::wait_for_slot_event(flags))?)
    }
    /// `C_LoginUser` (3.0)
    pub fn login_user(
        &self,
        session: u64,
        user_type: u64,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        parse::unit(self.call(req::login_user(session, user_type, pin, username))?)
    }
    /// `C_SessionCancel` (3.0)
    pub fn session_cancel(&self, session: u64, flags: u64) -> Result<()> {
        parse::unit(self.call(req::session_cancel(session, flags))?)
    }
    /// `C_MessageEncryptInit` (3.0)
    pub fn message_encrypt_init(&self, session: u64, mech: Mechanism, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::MessageEncryptInit,
            session,
            Some(mech),
            key,
        ))?)
    }
    /// `C_EncryptMessage` (3.0)
    pub fn encrypt_message(
        &self,
        session: u64,
        param: &[u8],
        aad: &[u8],
        data: &[u8],
        cap: OutCap,
    ) -> Result<Output> {
        parse::output(self.call(req::crypt_message(
            self.dialect(),
            CallId::EncryptMessage,
            session,
            param,
            aad,
            data,
            cap,
        ))?)
    }
    /// `C_EncryptMessageBegin` (3.0)
    pub fn encrypt_message_begin(&self, session: u64, param: &[u8], aad: &[u8]) -> Result<()> {
        parse::unit(self.call(req::crypt_message_begin(
            CallId::EncryptMessageBegin,
            session,
            param,
            aad,
        ))?)
    }
    /// `C_EncryptMessageNext` (3.0)
    pub fn encrypt_message_next(
        &self,
        session: u64,
        param: &[u8],
        part: &[u8],
        cap: OutCap,
        flags: u64,
    ) -> Result<Output> {
        parse::output(self.call(req::crypt_message_next(
            self.dialect(),
            CallId::EncryptMessageNext,
            session,
            param,
            part,
            cap,
            flags,
        ))?)
    }
    /// `C_MessageEncryptFinal` (3.0)
    pub fn message_encrypt_final(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::session_only(CallId::MessageEncryptFinal, session))?)
    }
    /// `C_MessageDecryptInit` (3.0)
    pub fn message_decrypt_init(&self, session: u64, mech: Mechanism, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::MessageDecryptInit,
            session,
            Some(mech),
            key,
        ))?)
    }
    /// `C_DecryptMessage` (3.0)
    pub fn decrypt_message(
        &self,
        session: u64,
        param: &[u8],
        aad: &[u8],
        data: &[u8],
        cap: OutCap,
    ) -> Result<Output> {
        parse::output(self.call(req::crypt_message(
            self.dialect(),
            CallId::DecryptMessage,
            session,
            param,
            aad,
            data,
            cap,
        ))?)
    }
    /// `C_DecryptMessageBegin` (3.0)
    pub fn decrypt_message_begin(&self, session: u64, param: &[u8], aad: &[u8]) -> Result<()> {
        parse::unit(self.call(req::crypt_message_begin(
            CallId::DecryptMessageBegin,
            session,
            param,
            aad,
        ))?)
    }
    /// `C_DecryptMessageNext` (3.0)
    pub fn decrypt_message_next(
        &self,
        session: u64,
        param: &[u8],
        part: &[u8],
        cap: OutCap,
        flags: u64,
    ) -> Result<Output> {
        parse::output(self.call(req::crypt_message_next(
            self.dialect(),
            CallId::DecryptMessageNext,
            session,
            param,
            part,
            cap,
            flags,
        ))?)
    }
    /// `C_MessageDecryptFinal` (3.0)
    pub fn message_decrypt_final(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::session_only(CallId::MessageDecryptFinal, session))?)
    }
    /// `C_MessageSignInit` (3.0)
    pub fn message_sign_init(&self, session: u64, mech: Mechanism, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::MessageSignInit,
            session,
            Some(mech),
            key,
        ))?)
    }
    /// `C_SignMessage` (3.0)
    pub fn sign_message(
        &self,
        session: u64,
        param: &[u8],
        data: &[u8],
        cap: OutCap,
    ) -> Result<Output> {
        parse::output(self.call(req::sign_message(self.dialect(), session, param, data, cap))?)
    }
    /// `C_SignMessageBegin` (3.0)
    pub fn sign_message_begin(&self, session: u64, param: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::SignMessageBegin, session, param))?)
    }
    /// `C_SignMessageNext` (3.0)
    pub fn sign_message_next(
        &self,
        session: u64,
        param: &[u8],
        data: &[u8],
        want_signature: bool,
        cap: OutCap,
    ) -> Result<Output> {
        parse::output(self.call(req::sign_message_next(
            self.dialect(),
            session,
            param,
            data,
            want_signature,
            cap,
        ))?)
    }
    /// `C_MessageSignFinal` (3.0)
    pub fn message_sign_final(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::session_only(CallId::MessageSignFinal, session))?)
    }
    /// `C_MessageVerifyInit` (3.0)
    pub fn message_verify_init(&self, session: u64, mech: Mechanism, key: u64) -> Result<()> {
        parse::unit(self.call(req::init_with_key(
            CallId::MessageVerifyInit,
            session,
            Some(mech),
            key,
        ))?)
    }
    /// `C_VerifyMessage` (3.0)
    pub fn verify_message(
        &self,
        session: u64,
        param: &[u8],
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        parse::unit(self.call(req::verify_message(
            CallId::VerifyMessage,
            session,
            param,
            data,
            signature,
        ))?)
    }
    /// `C_VerifyMessageBegin` (3.0)
    pub fn verify_message_begin(&self, session: u64, param: &[u8]) -> Result<()> {
        parse::unit(self.call(req::data_in(CallId::VerifyMessageBegin, session, param))?)
    }
    /// `C_VerifyMessageNext` (3.0)
    pub fn verify_message_next(
        &self,
        session: u64,
        param: &[u8],
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        parse::unit(self.call(req::verify_message(
            CallId::VerifyMessageNext,
            session,
            param,
            data,
            signature,
        ))?)
    }
    /// `C_MessageVerifyFinal` (3.0)
    pub fn message_verify_final(&self, session: u64) -> Result<()> {
        parse::unit(self.call(req::session_only(CallId::MessageVerifyFinal, session))?)
    }

    fn in_out(&self, call: CallId, session: u64, data: &[u8], cap: OutCap) -> Result<Output> {
        parse::output(self.call(req::data_in_out(self.dialect(), call, session, data, cap))?)
    }

    fn out(&self, call: CallId, session: u64, cap: OutCap) -> Result<Output> {
        parse::output(self.call(req::data_out(self.dialect(), call, session, cap))?)
    }
}
