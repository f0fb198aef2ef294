//! The fixed PKCS#11 info structures and their reply encodings (rpc §3, "Native structures").

use crate::error::ProtocolError;
use crate::value::{Arg, Version};

/// Pad or cut `s` to a fixed-width, space-padded field.
pub fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// A fixed-width field as text, without the padding.
pub fn unpad(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn take<const N: usize>(args: &mut std::vec::IntoIter<Arg>) -> Result<[u8; N], ProtocolError> {
    match args.next() {
        Some(Arg::Space(v)) => v
            .try_into()
            .map_err(|_| ProtocolError::BadValue("string width")),
        _ => Err(ProtocolError::ArgumentMismatch("s")),
    }
}

fn ulong(args: &mut std::vec::IntoIter<Arg>) -> Result<u64, ProtocolError> {
    match args.next() {
        Some(Arg::Ulong(v)) => Ok(v),
        _ => Err(ProtocolError::ArgumentMismatch("u")),
    }
}

fn version(args: &mut std::vec::IntoIter<Arg>) -> Result<Version, ProtocolError> {
    match args.next() {
        Some(Arg::Version(v)) => Ok(v),
        _ => Err(ProtocolError::ArgumentMismatch("v")),
    }
}

/// `CK_INFO` (`vsusv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// `cryptokiVersion`
    pub cryptoki_version: Version,
    /// `manufacturerID`
    pub manufacturer_id: [u8; 32],
    /// `flags`
    pub flags: u64,
    /// `libraryDescription`
    pub library_description: [u8; 32],
    /// `libraryVersion`
    pub library_version: Version,
}

impl Info {
    /// Reply arguments.
    pub fn to_args(&self) -> Vec<Arg> {
        vec![
            Arg::Version(self.cryptoki_version),
            Arg::Space(self.manufacturer_id.to_vec()),
            Arg::Ulong(self.flags),
            Arg::Space(self.library_description.to_vec()),
            Arg::Version(self.library_version),
        ]
    }

    /// From reply arguments.
    pub fn from_args(args: Vec<Arg>) -> Result<Self, ProtocolError> {
        let mut a = args.into_iter();
        Ok(Self {
            cryptoki_version: version(&mut a)?,
            manufacturer_id: take(&mut a)?,
            flags: ulong(&mut a)?,
            library_description: take(&mut a)?,
            library_version: version(&mut a)?,
        })
    }
}

/// `CK_SLOT_INFO` (`ssuvv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `slotDescription`
    pub slot_description: [u8; 64],
    /// `manufacturerID`
    pub manufacturer_id: [u8; 32],
    /// `flags`
    pub flags: u64,
    /// `hardwareVersion`
    pub hardware_version: Version,
    /// `firmwareVersion`
    pub firmware_version: Version,
}

impl SlotInfo {
    /// Reply arguments.
    pub fn to_args(&self) -> Vec<Arg> {
        vec![
            Arg::Space(self.slot_description.to_vec()),
            Arg::Space(self.manufacturer_id.to_vec()),
            Arg::Ulong(self.flags),
            Arg::Version(self.hardware_version),
            Arg::Version(self.firmware_version),
        ]
    }

    /// From reply arguments.
    pub fn from_args(args: Vec<Arg>) -> Result<Self, ProtocolError> {
        let mut a = args.into_iter();
        Ok(Self {
            slot_description: take(&mut a)?,
            manufacturer_id: take(&mut a)?,
            flags: ulong(&mut a)?,
            hardware_version: version(&mut a)?,
            firmware_version: version(&mut a)?,
        })
    }
}

/// `CK_TOKEN_INFO` (`ssssuuuuuuuuuuuvvs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `label`
    pub label: [u8; 32],
    /// `manufacturerID`
    pub manufacturer_id: [u8; 32],
    /// `model`
    pub model: [u8; 16],
    /// `serialNumber`
    pub serial_number: [u8; 16],
    /// `flags`
    pub flags: u64,
    /// `ulMaxSessionCount`
    pub max_session_count: u64,
    /// `ulSessionCount`
    pub session_count: u64,
    /// `ulMaxRwSessionCount`
    pub max_rw_session_count: u64,
    /// `ulRwSessionCount`
    pub rw_session_count: u64,
    /// `ulMaxPinLen`
    pub max_pin_len: u64,
    /// `ulMinPinLen`
    pub min_pin_len: u64,
    /// `ulTotalPublicMemory`
    pub total_public_memory: u64,
    /// `ulFreePublicMemory`
    pub free_public_memory: u64,
    /// `ulTotalPrivateMemory`
    pub total_private_memory: u64,
    /// `ulFreePrivateMemory`
    pub free_private_memory: u64,
    /// `hardwareVersion`
    pub hardware_version: Version,
    /// `firmwareVersion`
    pub firmware_version: Version,
    /// `utcTime`
    pub utc_time: [u8; 16],
}

impl TokenInfo {
    /// Reply arguments.
    pub fn to_args(&self) -> Vec<Arg> {
        let mut v = vec![
            Arg::Space(self.label.to_vec()),
            Arg::Space(self.manufacturer_id.to_vec()),
            Arg::Space(self.model.to_vec()),
            Arg::Space(self.serial_number.to_vec()),
        ];
        for u in [
            self.flags,
            self.max_session_count,
            self.session_count,
            self.max_rw_session_count,
            self.rw_session_count,
            self.max_pin_len,
            self.min_pin_len,
            self.total_public_memory,
            self.free_public_memory,
            self.total_private_memory,
            self.free_private_memory,
        ] {
            v.push(Arg::Ulong(u));
        }
        v.push(Arg::Version(self.hardware_version));
        v.push(Arg::Version(self.firmware_version));
        v.push(Arg::Space(self.utc_time.to_vec()));
        v
    }

    /// From reply arguments.
    pub fn from_args(args: Vec<Arg>) -> Result<Self, ProtocolError> {
        let mut a = args.into_iter();
        Ok(Self {
            label: take(&mut a)?,
            manufacturer_id: take(&mut a)?,
            model: take(&mut a)?,
            serial_number: take(&mut a)?,
            flags: ulong(&mut a)?,
            max_session_count: ulong(&mut a)?,
            session_count: ulong(&mut a)?,
            max_rw_session_count: ulong(&mut a)?,
            rw_session_count: ulong(&mut a)?,
            max_pin_len: ulong(&mut a)?,
            min_pin_len: ulong(&mut a)?,
            total_public_memory: ulong(&mut a)?,
            free_public_memory: ulong(&mut a)?,
            total_private_memory: ulong(&mut a)?,
            free_private_memory: ulong(&mut a)?,
            hardware_version: version(&mut a)?,
            firmware_version: version(&mut a)?,
            utc_time: take(&mut a)?,
        })
    }
}

/// `CK_SESSION_INFO` (`uuuu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// `slotID`
    pub slot_id: u64,
    /// `state`
    pub state: u64,
    /// `flags`
    pub flags: u64,
    /// `ulDeviceError`
    pub device_error: u64,
}

impl SessionInfo {
    /// Reply arguments.
    pub fn to_args(&self) -> Vec<Arg> {
        vec![
            Arg::Ulong(self.slot_id),
            Arg::Ulong(self.state),
            Arg::Ulong(self.flags),
            Arg::Ulong(self.device_error),
        ]
    }

    /// From reply arguments.
    pub fn from_args(args: Vec<Arg>) -> Result<Self, ProtocolError> {
        let mut a = args.into_iter();
        Ok(Self {
            slot_id: ulong(&mut a)?,
            state: ulong(&mut a)?,
            flags: ulong(&mut a)?,
            device_error: ulong(&mut a)?,
        })
    }
}

/// `CK_MECHANISM_INFO` (`uuu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechanismInfo {
    /// `ulMinKeySize`
    pub min_key_size: u64,
    /// `ulMaxKeySize`
    pub max_key_size: u64,
    /// `flags`
    pub flags: u64,
}

impl MechanismInfo {
    /// Reply arguments.
    pub fn to_args(&self) -> Vec<Arg> {
        vec![
            Arg::Ulong(self.min_key_size),
            Arg::Ulong(self.max_key_size),
            Arg::Ulong(self.flags),
        ]
    }

    /// From reply arguments.
    pub fn from_args(args: Vec<Arg>) -> Result<Self, ProtocolError> {
        let mut a = args.into_iter();
        Ok(Self {
            min_key_size: ulong(&mut a)?,
            max_key_size: ulong(&mut a)?,
            flags: ulong(&mut a)?,
        })
    }
}
