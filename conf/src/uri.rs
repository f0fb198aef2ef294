//! RFC 7512 `pkcs11:` URIs: parsing, canonical formatting, and matching.
//!
//! # Parsing
//!
//! [`Pkcs11Uri`] implements [`FromStr`]. The scheme is case-insensitive, attribute names are
//! case-sensitive (RFC 7512 §2.3), every value is percent-decoded, and text attributes must be
//! UTF-8 once decoded (`id` and unknown attributes are kept as bytes). Leading and trailing
//! whitespace is ignored; whitespace or control characters inside the URI are an error (write
//! `%20`), rather than being silently dropped as p11-kit does. Empty segments (`pkcs11:a=1;;b=2`,
//! a trailing `;` or `&`) are skipped.
//!
//! Accepted beyond the RFC, for compatibility with p11-kit and pkcs11-provider: `object-type`
//! and `objecttype` for `type`, `secretkey` for `secret-key`, `type` values in any case,
//! `pinfile` for `pin-source`, and `pin-source`/`pin-value` in the path (they are written back
//! in the query).
//!
//! A standard attribute may appear only once (path attributes of any kind too: RFC 7512 §2.3).
//! Unknown path attributes, including vendor `x-…` ones, and unknown query attributes are kept
//! in order and written back by [`Display`](fmt::Display). Unknown *query* attributes may repeat.
//!
//! # Formatting
//!
//! [`Display`](fmt::Display) gives the canonical form, which parses back to an equal value.
//! Path attributes come in pkcs11-provider's order — `model`, `manufacturer`, `serial`, `token`,
//! `id`, `object`, `type` — then `library-manufacturer`, `library-description`,
//! `library-version`, `slot-manufacturer`, `slot-description`, `slot-id`, then unknown path
//! attributes; the query has `pin-source`, `pin-value`, `module-name`, `module-path`, then unknown
//! query attributes. `id` is written entirely as upper-case `%XX`, like p11tool and
//! pkcs11-provider; other values escape everything outside RFC 7512's `pk11-pchar` (path) or
//! `pk11-qchar` (query) sets. [`Pkcs11Uri::redacted`] formats without `pin-value`, and `Debug`
//! never shows it.
//!
//! # Matching
//!
//! The `matches_*` methods compare the URI with views of what a module reports. An attribute the
//! URI does not have matches anything. Fixed-width `CK_*_INFO` strings are compared after
//! removing trailing spaces and NULs (on both sides); `object` and `id` are compared exactly.
//! As RFC 7512 §3.3 asks and p11-kit does, a URI with an unknown path attribute matches nothing,
//! since it may restrict on something we cannot check.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::percent::{self, Component};

/// The object classes RFC 7512's `type` attribute can name, with their `CKO_*` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectClass {
    /// `type=data`, `CKO_DATA` (0).
    Data,
    /// `type=cert`, `CKO_CERTIFICATE` (1).
    Certificate,
    /// `type=public`, `CKO_PUBLIC_KEY` (2).
    PublicKey,
    /// `type=private`, `CKO_PRIVATE_KEY` (3).
    PrivateKey,
    /// `type=secret-key`, `CKO_SECRET_KEY` (4).
    SecretKey,
}

impl ObjectClass {
    /// The `CKO_*` value.
    pub const fn ck_value(self) -> u64 {
        match self {
            Self::Data => 0,
            Self::Certificate => 1,
            Self::PublicKey => 2,
            Self::PrivateKey => 3,
            Self::SecretKey => 4,
        }
    }

    /// The class for a `CKO_*` value, if RFC 7512 can name it.
    pub const fn from_ck(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::Data),
            1 => Some(Self::Certificate),
            2 => Some(Self::PublicKey),
            3 => Some(Self::PrivateKey),
            4 => Some(Self::SecretKey),
            _ => None,
        }
    }

    /// The value of the `type` attribute: `data`, `cert`, `public`, `private` or `secret-key`.
    pub const fn uri_name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Certificate => "cert",
            Self::PublicKey => "public",
            Self::PrivateKey => "private",
            Self::SecretKey => "secret-key",
        }
    }

    /// Parses a `type` value: ASCII case-insensitive (RFC 5234 literals), plus p11-kit's
    /// `secretkey` spelling.
    pub fn from_uri_name(name: &str) -> Option<Self> {
        const NAMES: [(&str, ObjectClass); 6] = [
            ("data", ObjectClass::Data),
            ("cert", ObjectClass::Certificate),
            ("public", ObjectClass::PublicKey),
            ("private", ObjectClass::PrivateKey),
            ("secret-key", ObjectClass::SecretKey),
            ("secretkey", ObjectClass::SecretKey),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, class)| class)
    }
}

impl fmt::Display for ObjectClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri_name())
    }
}

impl From<ObjectClass> for u64 {
    fn from(class: ObjectClass) -> Self {
        class.ck_value()
    }
}

/// What a module says about itself (`CK_INFO`), for [`Pkcs11Uri::matches_library`].
///
/// The strings are the raw fixed-width fields; padding is ignored when comparing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibraryView<'a> {
    /// `CK_INFO.manufacturerID`.
    pub manufacturer: &'a [u8],
    /// `CK_INFO.libraryDescription`.
    pub description: &'a [u8],
    /// `CK_INFO.libraryVersion` as (major, minor).
    pub version: (u8, u8),
}

/// A slot (`CK_SLOT_INFO` and its id), for [`Pkcs11Uri::matches_slot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotView<'a> {
    /// The `CK_SLOT_ID`.
    pub id: u64,
    /// `CK_SLOT_INFO.slotDescription`.
    pub description: &'a [u8],
    /// `CK_SLOT_INFO.manufacturerID`.
    pub manufacturer: &'a [u8],
}

/// A token (`CK_TOKEN_INFO`), for [`Pkcs11Uri::matches_token`] and the builders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenView<'a> {
    /// `CK_TOKEN_INFO.label`.
    pub label: &'a [u8],
    /// `CK_TOKEN_INFO.manufacturerID`.
    pub manufacturer: &'a [u8],
    /// `CK_TOKEN_INFO.model`.
    pub model: &'a [u8],
    /// `CK_TOKEN_INFO.serialNumber`.
    pub serial: &'a [u8],
}

/// An object's identifying attributes, for [`Pkcs11Uri::matches_object`] and
/// [`Pkcs11Uri::for_object`].
///
/// `None` means "not known" (not fetched, or the object has no such attribute). A URI that
/// constrains an attribute never matches an object whose value for it is unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectView<'a> {
    /// `CKA_LABEL`, compared exactly.
    pub label: Option<&'a [u8]>,
    /// `CKA_ID`, compared exactly.
    pub id: Option<&'a [u8]>,
    /// `CKA_CLASS`; use [`ObjectClass::from_ck`] (other classes are `None`).
    pub class: Option<ObjectClass>,
}

/// A parsed RFC 7512 `pkcs11:` URI.
///
/// Build one with [`FromStr`], [`Pkcs11Uri::new`] and the `with_*` methods, or
/// [`Pkcs11Uri::for_token`] / [`Pkcs11Uri::for_object`]. See the [module docs](self) for the
/// parsing, formatting and matching rules.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    model: Option<String>,
    manufacturer: Option<String>,
    serial: Option<String>,
    token: Option<String>,
    id: Option<Vec<u8>>,
    object: Option<String>,
    class: Option<ObjectClass>,
    library_manufacturer: Option<String>,
    library_description: Option<String>,
    library_version: Option<(u8, u8)>,
    slot_manufacturer: Option<String>,
    slot_description: Option<String>,
    slot_id: Option<u64>,
    /// Unknown and vendor path attributes, in order, values decoded.
    path_other: Vec<(String, Vec<u8>)>,
    pin_source: Option<String>,
    pin_value: Option<Zeroizing<String>>,
    module_name: Option<String>,
    module_path: Option<String>,
    /// Unknown and vendor query attributes, in order, values decoded.
    query_other: Vec<(String, Vec<u8>)>,
}

impl Pkcs11Uri {
    /// An empty URI (`pkcs11:`), which matches everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a URI; the same as [`str::parse`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        text.parse()
    }

    /// A URI naming one token by its label, manufacturer, model and serial number.
    ///
    /// Padding is removed; fields that are empty once trimmed are left out.
    pub fn for_token(token: &TokenView<'_>) -> Result<Self, Error> {
        Ok(Self {
            model: info_text(token.model, "token model")?,
            manufacturer: info_text(token.manufacturer, "token manufacturer")?,
            serial: info_text(token.serial, "token serial number")?,
            token: info_text(token.label, "token label")?,
            ..Self::default()
        })
    }

    /// A URI naming one object on one token, like pkcs11-provider's `p11prov_key_to_uri`.
    ///
    /// The object's label and id are taken when known; an empty label or id is left out.
    pub fn for_object(token: &TokenView<'_>, object: &ObjectView<'_>) -> Result<Self, Error> {
        let mut uri = Self::for_token(token)?;
        if let Some(label) = object.label.filter(|l| !l.is_empty()) {
            let label = std::str::from_utf8(label).map_err(|_| Error::NotUtf8 {
                field: "object label",
            })?;
            uri.object = Some(label.to_owned());
        }
        uri.id = object.id.filter(|id| !id.is_empty()).map(<[u8]>::to_vec);
        uri.class = object.class;
        Ok(uri)
    }

    // ---- accessors -------------------------------------------------------------------------

    /// `token`: the token label (`CK_TOKEN_INFO.label`).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `manufacturer`: the token manufacturer (`CK_TOKEN_INFO.manufacturerID`).
    pub fn manufacturer(&self) -> Option<&str> {
        self.manufacturer.as_deref()
    }

    /// `serial`: the token serial number.
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// `model`: the token model.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// `library-manufacturer` (`CK_INFO.manufacturerID`).
    pub fn library_manufacturer(&self) -> Option<&str> {
        self.library_manufacturer.as_deref()
    }

    /// `library-description` (`CK_INFO.libraryDescription`).
    pub fn library_description(&self) -> Option<&str> {
        self.library_description.as_deref()
    }

    /// `library-version` as (major, minor); `library-version=3` is (3, 0).
    pub fn library_version(&self) -> Option<(u8, u8)> {
        self.library_version
    }

    /// `slot-description` (`CK_SLOT_INFO.slotDescription`).
    pub fn slot_description(&self) -> Option<&str> {
        self.slot_description.as_deref()
    }

    /// `slot-manufacturer` (`CK_SLOT_INFO.manufacturerID`).
    pub fn slot_manufacturer(&self) -> Option<&str> {
        self.slot_manufacturer.as_deref()
    }

    /// `slot-id`.
    pub fn slot_id(&self) -> Option<u64> {
        self.slot_id
    }

    /// `object`: the object label (`CKA_LABEL`).
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// `type` (or `object-type`) as an [`ObjectClass`].
    pub fn object_type(&self) -> Option<ObjectClass> {
        self.class
    }

    /// `type` as its `CKO_*` value: data 0, cert 1, public 2, private 3, secret-key 4.
    pub fn object_class(&self) -> Option<u64> {
        self.class.map(ObjectClass::ck_value)
    }

    /// `id`: the object id (`CKA_ID`) as bytes.
    pub fn id(&self) -> Option<&[u8]> {
        self.id.as_deref()
    }

    /// `pin-source`, decoded but not interpreted (see [`crate::pin`]).
    pub fn pin_source(&self) -> Option<&str> {
        self.pin_source.as_deref()
    }

    /// `pin-value`. Handle with care: never log it.
    pub fn pin_value(&self) -> Option<&str> {
        self.pin_value.as_ref().map(|p| p.as_str())
    }

    /// `module-name`.
    pub fn module_name(&self) -> Option<&str> {
        self.module_name.as_deref()
    }

    /// `module-path`.
    pub fn module_path(&self) -> Option<&str> {
        self.module_path.as_deref()
    }

    /// Unknown and vendor path attributes, in URI order, with decoded values.
    pub fn other_path_attributes(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.path_other
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Unknown and vendor query attributes, in URI order, with decoded values.
    pub fn other_query_attributes(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.query_other
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first unknown query attribute called `name`, e.g. p11-kit's `write-protected`.
    pub fn query_attribute(&self, name: &str) -> Option<&[u8]> {
        self.query_other
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// `?write-protected=yes`, which `p11-kit server` honours by refusing read-write sessions.
    pub fn is_write_protected(&self) -> bool {
        self.query_attribute("write-protected") == Some(b"yes".as_slice())
    }

    /// Whether the URI names a token at all (`token`, `manufacturer`, `serial` or `model`).
    pub fn has_token_attributes(&self) -> bool {
        self.token.is_some()
            || self.manufacturer.is_some()
            || self.serial.is_some()
            || self.model.is_some()
    }

    /// Whether the URI has `slot-id`, `slot-description` or `slot-manufacturer`.
    pub fn has_slot_attributes(&self) -> bool {
        self.slot_id.is_some()
            || self.slot_description.is_some()
            || self.slot_manufacturer.is_some()
    }

    /// Whether the URI has `library-manufacturer`, `library-description` or `library-version`.
    pub fn has_library_attributes(&self) -> bool {
        self.library_manufacturer.is_some()
            || self.library_description.is_some()
            || self.library_version.is_some()
    }

    /// Whether the URI has `object`, `id` or `type`.
    pub fn has_object_attributes(&self) -> bool {
        self.object.is_some() || self.id.is_some() || self.class.is_some()
    }

    /// Whether the path has attributes this crate does not know (vendor or newer ones). Such
    /// a URI matches nothing (RFC 7512 §3.3, as p11-kit).
    pub fn has_unknown_path_attributes(&self) -> bool {
        !self.path_other.is_empty()
    }

    // ---- builders --------------------------------------------------------------------------

    /// Sets `token` (the token label).
    #[must_use]
    pub fn with_token(mut self, label: impl Into<String>) -> Self {
        self.token = Some(label.into());
        self
    }

    /// Sets `manufacturer`.
    #[must_use]
    pub fn with_manufacturer(mut self, manufacturer: impl Into<String>) -> Self {
        self.manufacturer = Some(manufacturer.into());
        self
    }

    /// Sets `serial`.
    #[must_use]
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    /// Sets `model`.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets `library-manufacturer`.
    #[must_use]
    pub fn with_library_manufacturer(mut self, manufacturer: impl Into<String>) -> Self {
        self.library_manufacturer = Some(manufacturer.into());
        self
    }

    /// Sets `library-description`.
    #[must_use]
    pub fn with_library_description(mut self, description: impl Into<String>) -> Self {
        self.library_description = Some(description.into());
        self
    }

    /// Sets `library-version`.
    #[must_use]
    pub fn with_library_version(mut self, major: u8, minor: u8) -> Self {
        self.library_version = Some((major, minor));
        self
    }

    /// Sets `slot-id`.
    #[must_use]
    pub fn with_slot_id(mut self, id: u64) -> Self {
        self.slot_id = Some(id);
        self
    }

    /// Sets `slot-description`.
    #[must_use]
    pub fn with_slot_description(mut self, description: impl Into<String>) -> Self {
        self.slot_description = Some(description.into());
        self
    }

    /// Sets `slot-manufacturer`.
    #[must_use]
    pub fn with_slot_manufacturer(mut self, manufacturer: impl Into<String>) -> Self {
        self.slot_manufacturer = Some(manufacturer.into());
        self
    }

    /// Sets `object` (the object label).
    #[must_use]
    pub fn with_object(mut self, label: impl Into<String>) -> Self {
        self.object = Some(label.into());
        self
    }

    /// Sets `id`.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<Vec<u8>>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets `type`.
    #[must_use]
    pub fn with_object_type(mut self, class: ObjectClass) -> Self {
        self.class = Some(class);
        self
    }

    /// Sets `pin-source`.
    #[must_use]
    pub fn with_pin_source(mut self, source: impl Into<String>) -> Self {
        self.pin_source = Some(source.into());
        self
    }

    /// Sets `pin-value`. The PIN is zeroized when the URI is dropped.
    #[must_use]
    pub fn with_pin_value(mut self, pin: impl Into<String>) -> Self {
        self.pin_value = Some(Zeroizing::new(pin.into()));
        self
    }

    /// Removes `pin-value`, e.g. before handing the URI to something that logs.
    #[must_use]
    pub fn without_pin_value(mut self) -> Self {
        self.pin_value = None;
        self
    }

    /// Takes `pin-value` out of the URI.
    pub fn take_pin_value(&mut self) -> Option<Zeroizing<String>> {
        self.pin_value.take()
    }

    /// Sets `module-name`.
    #[must_use]
    pub fn with_module_name(mut self, name: impl Into<String>) -> Self {
        self.module_name = Some(name.into());
        self
    }

    /// Sets `module-path`.
    #[must_use]
    pub fn with_module_path(mut self, path: impl Into<String>) -> Self {
        self.module_path = Some(path.into());
        self
    }

    /// Appends an unknown or vendor query attribute, e.g. `write-protected=yes`.
    ///
    /// Fails if `name` is not a valid attribute name (letters, digits, `-`, `_`) or is one of the
    /// standard query attributes, which have their own setters.
    pub fn with_query_attribute(
        mut self,
        name: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<Self, Error> {
        check_name(name)?;
        if matches!(
            name,
            "pin-source" | "pinfile" | "pin-value" | "module-name" | "module-path"
        ) {
            return Err(Error::InvalidAttribute {
                name: name.to_owned(),
                reason: "is a standard query attribute; use its own setter".to_owned(),
            });
        }
        self.query_other.push((name.to_owned(), value.into()));
        Ok(self)
    }

    // ---- formatting ------------------------------------------------------------------------

    /// A [`Display`](fmt::Display) of this URI without `pin-value`, for logs and messages.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }

    /// The canonical form without `pin-value`; `self.redacted().to_string()`.
    pub fn to_string_without_pin(&self) -> String {
        self.redacted().to_string()
    }

    fn write(&self, out: &mut dyn fmt::Write, with_pin: bool) -> fmt::Result {
        out.write_str("pkcs11:")?;
        let mut w = AttrWriter {
            out,
            path_done: false,
            first: true,
        };

        w.text("model", self.model.as_deref())?;
        w.text("manufacturer", self.manufacturer.as_deref())?;
        w.text("serial", self.serial.as_deref())?;
        w.text("token", self.token.as_deref())?;
        if let Some(id) = &self.id {
            w.name("id")?;
            percent::write_all_hex(w.out, id)?;
        }
        w.text("object", self.object.as_deref())?;
        if let Some(class) = self.class {
            w.name("type")?;
            w.out.write_str(class.uri_name())?;
        }
        w.text("library-manufacturer", self.library_manufacturer.as_deref())?;
        w.text("library-description", self.library_description.as_deref())?;
        if let Some((major, minor)) = self.library_version {
            w.name("library-version")?;
            write!(w.out, "{major}.{minor}")?;
        }
        w.text("slot-manufacturer", self.slot_manufacturer.as_deref())?;
        w.text("slot-description", self.slot_description.as_deref())?;
        if let Some(id) = self.slot_id {
            w.name("slot-id")?;
            write!(w.out, "{id}")?;
        }
        for (name, value) in &self.path_other {
            w.bytes(name, value)?;
        }

        w.start_query();
        w.text("pin-source", self.pin_source.as_deref())?;
        if with_pin {
            w.text("pin-value", self.pin_value.as_ref().map(|p| p.as_str()))?;
        }
        w.text("module-name", self.module_name.as_deref())?;
        w.text("module-path", self.module_path.as_deref())?;
        for (name, value) in &self.query_other {
            w.bytes(name, value)?;
        }
        Ok(())
    }

    // ---- matching --------------------------------------------------------------------------

    /// Whether the `library-*` attributes match a module's `CK_INFO`.
    pub fn matches_library(&self, library: &LibraryView<'_>) -> bool {
        self.path_other.is_empty()
            && padded_eq(self.library_manufacturer.as_deref(), library.manufacturer)
            && padded_eq(self.library_description.as_deref(), library.description)
            && self.library_version.is_none_or(|v| v == library.version)
    }

    /// Whether the `slot-*` attributes match a slot.
    pub fn matches_slot(&self, slot: &SlotView<'_>) -> bool {
        self.path_other.is_empty()
            && self.slot_id.is_none_or(|id| id == slot.id)
            && padded_eq(self.slot_description.as_deref(), slot.description)
            && padded_eq(self.slot_manufacturer.as_deref(), slot.manufacturer)
    }

    /// Whether `token`, `manufacturer`, `model` and `serial` match a token.
    pub fn matches_token(&self, token: &TokenView<'_>) -> bool {
        self.path_other.is_empty()
            && padded_eq(self.token.as_deref(), token.label)
            && padded_eq(self.manufacturer.as_deref(), token.manufacturer)
            && padded_eq(self.model.as_deref(), token.model)
            && padded_eq(self.serial.as_deref(), token.serial)
    }

    /// Whether `object`, `id` and `type` match an object.
    pub fn matches_object(&self, object: &ObjectView<'_>) -> bool {
        fn exact(want: Option<&[u8]>, have: Option<&[u8]>) -> bool {
            match (want, have) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
        }
        self.path_other.is_empty()
            && exact(self.object.as_deref().map(str::as_bytes), object.label)
            && exact(self.id.as_deref(), object.id)
            && self.class.is_none_or(|c| object.class == Some(c))
    }

    // ---- parsing ---------------------------------------------------------------------------

    fn parse_path_attribute(&mut self, segment: &str) -> Result<(), Error> {
        let (name, raw) = segment.split_once('=').ok_or_else(|| Error::UriSyntax {
            reason: format!("path attribute `{}` has no `=`", shorten(segment)),
        })?;
        check_name(name)?;
        match name {
            "model" => set_text(&mut self.model, name, raw),
            "manufacturer" => set_text(&mut self.manufacturer, name, raw),
            "serial" => set_text(&mut self.serial, name, raw),
            "token" => set_text(&mut self.token, name, raw),
            "object" => set_text(&mut self.object, name, raw),
            "library-manufacturer" => set_text(&mut self.library_manufacturer, name, raw),
            "library-description" => set_text(&mut self.library_description, name, raw),
            "slot-manufacturer" => set_text(&mut self.slot_manufacturer, name, raw),
            "slot-description" => set_text(&mut self.slot_description, name, raw),
            "id" => {
                ensure_unset(&self.id, "id")?;
                self.id = Some(decode(name, raw)?);
                Ok(())
            }
            "type" | "object-type" | "objecttype" => {
                ensure_unset(&self.class, "type")?;
                self.class = Some(parse_type(name, raw)?);
                Ok(())
            }
            "library-version" => {
                ensure_unset(&self.library_version, name)?;
                self.library_version = Some(parse_version(name, raw)?);
                Ok(())
            }
            "slot-id" => {
                ensure_unset(&self.slot_id, name)?;
                self.slot_id = Some(parse_slot_id(name, raw)?);
                Ok(())
            }
            // p11-kit accepts these in the path "for backward compatibility".
            "pin-source" | "pinfile" | "pin-value" => self.parse_query_attribute(segment),
            _ => {
                if self.path_other.iter().any(|(n, _)| n == name) {
                    return Err(Error::DuplicateAttribute {
                        name: name.to_owned(),
                    });
                }
                self.path_other.push((name.to_owned(), decode(name, raw)?));
                Ok(())
            }
        }
    }

    fn parse_query_attribute(&mut self, segment: &str) -> Result<(), Error> {
        // Query segments may be secrets (`pin-value`), so they are never echoed.
        let (name, raw) = segment.split_once('=').ok_or_else(|| Error::UriSyntax {
            reason: "a query attribute has no `=`".to_owned(),
        })?;
        check_name(name)?;
        match name {
            "pin-source" | "pinfile" => set_text(&mut self.pin_source, "pin-source", raw),
            "pin-value" => {
                ensure_unset(&self.pin_value, name)?;
                self.pin_value = Some(decode_secret(name, raw)?);
                Ok(())
            }
            "module-name" => set_text(&mut self.module_name, name, raw),
            "module-path" => set_text(&mut self.module_path, name, raw),
            _ => {
                let value = decode(name, raw)?;
                self.query_other.push((name.to_owned(), value));
                Ok(())
            }
        }
    }
}

impl FromStr for Pkcs11Uri {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let (scheme, rest) = text.split_once(':').ok_or(Error::NotPkcs11Uri)?;
        if !scheme.eq_ignore_ascii_case("pkcs11") {
            return Err(Error::NotPkcs11Uri);
        }
        if let Some((offset, _)) = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(Error::UriSyntax {
                reason: format!(
                    "whitespace or control character at byte {} (percent-encode it, e.g. a \
                     space as %20)",
                    scheme.len() + 1 + offset
                ),
            });
        }
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        for segment in path.split(';').filter(|s| !s.is_empty()) {
            uri.parse_path_attribute(segment)?;
        }
        for segment in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|s| !s.is_empty())
        {
            uri.parse_query_attribute(segment)?;
        }
        Ok(uri)
    }
}

/// The canonical form, **including `pin-value`**: use [`Pkcs11Uri::redacted`] for anything that
/// may be logged or shown.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Pkcs11Uri");
        d.field("uri", &self.to_string_without_pin());
        if self.pin_value.is_some() {
            d.field("pin_value", &format_args!("<redacted>"));
        }
        d.finish()
    }
}

/// A [`Pkcs11Uri`] formatted without its `pin-value`; see [`Pkcs11Uri::redacted`].
#[derive(Clone, Copy)]
pub struct Redacted<'a>(&'a Pkcs11Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f, false)
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Writes `name=value` pairs with the right separators.
struct AttrWriter<'a> {
    out: &'a mut dyn fmt::Write,
    path_done: bool,
    first: bool,
}

impl AttrWriter<'_> {
    fn start_query(&mut self) {
        self.path_done = true;
        self.first = true;
    }

    fn name(&mut self, name: &str) -> fmt::Result {
        match (self.path_done, self.first) {
            (false, true) => {}
            (false, false) => self.out.write_char(';')?,
            (true, true) => self.out.write_char('?')?,
            (true, false) => self.out.write_char('&')?,
        }
        self.first = false;
        self.out.write_str(name)?;
        self.out.write_char('=')
    }

    fn component(&self) -> Component {
        if self.path_done {
            Component::Query
        } else {
            Component::Path
        }
    }

    fn bytes(&mut self, name: &str, value: &[u8]) -> fmt::Result {
        self.name(name)?;
        let component = self.component();
        percent::write_value(self.out, value, component)
    }

    fn text(&mut self, name: &str, value: Option<&str>) -> fmt::Result {
        match value {
            Some(value) => self.bytes(name, value.as_bytes()),
            None => Ok(()),
        }
    }
}

/// Attribute names are `1*(ALPHA / DIGIT / "-" / "_")` (RFC 7512 `pk11-v-attr-nm-char`; the
/// standard names fit it too).
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::UriSyntax {
            reason: "empty attribute name (`=value`)".to_owned(),
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::UriSyntax {
            reason: format!(
                "attribute name `{}` may only contain letters, digits, `-` and `_`",
                shorten(name)
            ),
        });
    }
    Ok(())
}

fn ensure_unset<T>(slot: &Option<T>, name: &str) -> Result<(), Error> {
    match slot {
        Some(_) => Err(Error::DuplicateAttribute {
            name: name.to_owned(),
        }),
        None => Ok(()),
    }
}

fn decode(name: &str, raw: &str) -> Result<Vec<u8>, Error> {
    percent::decode(raw.as_bytes()).map_err(|offset| Error::PercentEncoding {
        name: name.to_owned(),
        offset,
    })
}

fn decode_text(name: &str, raw: &str) -> Result<String, Error> {
    String::from_utf8(decode(name, raw)?).map_err(|_| Error::InvalidAttribute {
        name: name.to_owned(),
        reason: "is not valid UTF-8 once percent-decoded".to_owned(),
    })
}

/// Decodes a secret: no copy of it outlives this function outside the returned value.
fn decode_secret(name: &str, raw: &str) -> Result<Zeroizing<String>, Error> {
    // Decoded text is never longer than the encoded text, so the buffer never reallocates.
    let mut buf = Zeroizing::new(Vec::with_capacity(raw.len()));
    percent::decode_into(raw.as_bytes(), &mut buf).map_err(|offset| Error::PercentEncoding {
        name: name.to_owned(),
        offset,
    })?;
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(pin) => Ok(Zeroizing::new(pin)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(Error::InvalidAttribute {
                name: name.to_owned(),
                reason: "is not valid UTF-8 once percent-decoded".to_owned(),
            })
        }
    }
}

fn set_text(slot: &mut Option<String>, name: &str, raw: &str) -> Result<(), Error> {
    ensure_unset(slot, name)?;
    *slot = Some(decode_text(name, raw)?);
    Ok(())
}

fn parse_type(name: &str, raw: &str) -> Result<ObjectClass, Error> {
    let value = decode_text(name, raw)?;
    ObjectClass::from_uri_name(&value).ok_or_else(|| Error::InvalidAttribute {
        name: name.to_owned(),
        reason: format!(
            "`{}` is not one of cert, data, private, public, secret-key",
            shorten(&value)
        ),
    })
}

fn parse_decimal<T: FromStr>(name: &str, text: &str, what: &str) -> Result<T, Error> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidAttribute {
            name: name.to_owned(),
            reason: format!("`{}` is not {what}", shorten(text)),
        });
    }
    text.parse().map_err(|_| Error::InvalidAttribute {
        name: name.to_owned(),
        reason: format!("`{}` is too large for {what}", shorten(text)),
    })
}

fn parse_slot_id(name: &str, raw: &str) -> Result<u64, Error> {
    let value = decode_text(name, raw)?;
    parse_decimal(name, &value, "a decimal slot id (64 bits)")
}

/// `M` or `M.N`, each 0..=255.
fn parse_version(name: &str, raw: &str) -> Result<(u8, u8), Error> {
    let value = decode_text(name, raw)?;
    let (major, minor) = match value.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (value.as_str(), None),
    };
    let what = "a version number (M or M.N, each 0-255)";
    let major = parse_decimal(name, major, what)?;
    let minor = match minor {
        Some(minor) => parse_decimal(name, minor, what)?,
        None => 0,
    };
    Ok((major, minor))
}

/// Text for a URI from a fixed-width info field: padding removed, `None` if empty.
fn info_text(field: &[u8], what: &'static str) -> Result<Option<String>, Error> {
    let trimmed = trim_padding(field);
    if trimmed.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(trimmed)
        .map(|s| Some(s.to_owned()))
        .map_err(|_| Error::NotUtf8 { field: what })
}

/// Removes trailing spaces and NULs, the padding of `CK_*_INFO` strings.
fn trim_padding(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |last| last + 1);
    field.get(..end).unwrap_or(field)
}

fn padded_eq(want: Option<&str>, have: &[u8]) -> bool {
    want.is_none_or(|want| trim_padding(want.as_bytes()) == trim_padding(have))
}

/// At most 40 characters of user input, for error messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use super::*;

    fn parse(text: &str) -> Pkcs11Uri {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn parse_err(text: &str) -> Error {
        match text.parse::<Pkcs11Uri>() {
            Ok(uri) => panic!("{text} parsed as {uri:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_empty_and_scheme_case() {
        assert_eq!(parse("pkcs11:"), Pkcs11Uri::new());
        assert_eq!(parse("PKCS11:"), Pkcs11Uri::new());
        assert_eq!(parse("  pkcs11:object=a\n").object(), Some("a"));
        assert_eq!(Pkcs11Uri::new().to_string(), "pkcs11:");
    }

    #[test]
    fn parses_object_without_query() {
        let uri = parse("pkcs11:object=key1");
        assert_eq!(uri.object(), Some("key1"));
        assert!(!uri.has_token_attributes());
        assert!(uri.has_object_attributes());
        assert_eq!(uri.to_string(), "pkcs11:object=key1");
    }

    #[test]
    fn parses_query_only() {
        let uri = parse("pkcs11:?pin-value=1");
        assert_eq!(uri.pin_value(), Some("1"));
        assert_eq!(uri.to_string(), "pkcs11:?pin-value=1");
        assert_eq!(uri.to_string_without_pin(), "pkcs11:");
    }

    #[test]
    fn id_is_bytes_and_formats_as_upper_hex() {
        let uri = parse("pkcs11:id=%01%02%ff");
        assert_eq!(uri.id(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(uri.to_string(), "pkcs11:id=%01%02%FF");
        assert_eq!(parse("pkcs11:id=ab").id(), Some(&b"ab"[..]));
        assert_eq!(parse("pkcs11:id=ab").to_string(), "pkcs11:id=%61%62");
    }

    #[test]
    fn escaped_semicolon_stays_in_the_value() {
        let uri = parse("pkcs11:token=a%3Bb;object=c%3Fd");
        assert_eq!(uri.token(), Some("a;b"));
        assert_eq!(uri.object(), Some("c?d"));
        assert_eq!(uri.to_string(), "pkcs11:token=a%3Bb;object=c%3Fd");
    }

    #[test]
    fn question_mark_and_slash_are_raw_in_query_values() {
        let uri = parse("pkcs11:object=k?module-path=/usr/lib/x.so&x-a=b?c");
        assert_eq!(uri.module_path(), Some("/usr/lib/x.so"));
        assert_eq!(uri.query_attribute("x-a"), Some(&b"b?c"[..]));
        assert_eq!(
            uri.to_string(),
            "pkcs11:object=k?module-path=/usr/lib/x.so&x-a=b?c"
        );
    }

    #[test]
    fn formats_in_pkcs11_provider_order() {
        let uri = parse(
            "pkcs11:slot-id=3;type=private;object=k;id=%01;token=t;serial=s;manufacturer=m;\
             model=mo;library-version=1;x-v=1?module-name=n&pin-value=p&pin-source=file:/p",
        );
        assert_eq!(
            uri.to_string(),
            "pkcs11:model=mo;manufacturer=m;serial=s;token=t;id=%01;object=k;type=private;\
             library-version=1.0;slot-id=3;x-v=1?pin-source=file:/p&pin-value=p&module-name=n"
        );
    }

    #[test]
    fn keeps_vendor_attributes_in_order() {
        let uri = parse("pkcs11:x-b=2;token=t;x-a=%41?x-q=1&foo=bar&x-q=2");
        let path: Vec<_> = uri.other_path_attributes().collect();
        assert_eq!(path, [("x-b", &b"2"[..]), ("x-a", &b"A"[..])]);
        let query: Vec<_> = uri.other_query_attributes().collect();
        assert_eq!(
            query,
            [("x-q", &b"1"[..]), ("foo", &b"bar"[..]), ("x-q", &b"2"[..])]
        );
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=t;x-b=2;x-a=A?x-q=1&foo=bar&x-q=2"
        );
    }

    #[test]
    fn aliases_and_type_case() {
        assert_eq!(parse("pkcs11:object-type=cert").object_class(), Some(1));
        assert_eq!(parse("pkcs11:objecttype=secretkey").object_class(), Some(4));
        assert_eq!(
            parse("pkcs11:type=PRIVATE").object_type(),
            Some(ObjectClass::PrivateKey)
        );
        assert_eq!(parse("pkcs11:type=data").object_class(), Some(0));
        assert_eq!(parse("pkcs11:type=public").object_class(), Some(2));
        assert_eq!(parse("pkcs11:type=cert").to_string(), "pkcs11:type=cert");
        assert_eq!(parse("pkcs11:?pinfile=/x").pin_source(), Some("/x"));
        let uri = parse("pkcs11:token=t;pin-value=1");
        assert_eq!(uri.pin_value(), Some("1"));
        assert_eq!(uri.to_string(), "pkcs11:token=t?pin-value=1");
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(parse_err("pkcs11"), Error::NotPkcs11Uri));
        assert!(matches!(parse_err("http://x"), Error::NotPkcs11Uri));
        assert!(matches!(parse_err(""), Error::NotPkcs11Uri));
        assert!(matches!(
            parse_err("pkcs11:slot-id=abc"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:slot-id="),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:slot-id=18446744073709551616"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:type=otp"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:type="),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:token=a;token=b"),
            Error::DuplicateAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:type=cert;object-type=cert"),
            Error::DuplicateAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:x-a=1;x-a=1"),
            Error::DuplicateAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:pin-value=1?pin-value=1"),
            Error::DuplicateAttribute { .. }
        ));
        assert!(matches!(parse_err("pkcs11:=x"), Error::UriSyntax { .. }));
        assert!(matches!(parse_err("pkcs11:?=x"), Error::UriSyntax { .. }));
        assert!(matches!(parse_err("pkcs11:token"), Error::UriSyntax { .. }));
        assert!(matches!(
            parse_err("pkcs11:to%6Ben=x"),
            Error::UriSyntax { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:token=a b"),
            Error::UriSyntax { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:token=%4"),
            Error::PercentEncoding { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:id=%zz"),
            Error::PercentEncoding { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:token=%ff"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:library-version=1."),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:library-version=256"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:library-version=.1"),
            Error::InvalidAttribute { .. }
        ));
        assert!(matches!(
            parse_err("pkcs11:library-version=1.2.3"),
            Error::InvalidAttribute { .. }
        ));
    }

    #[test]
    fn errors_never_echo_the_pin() {
        for text in [
            "pkcs11:?pin-value=s3cr3t%zz",
            "pkcs11:?pin-value=s3cr3t%ff",
            "pkcs11:?s3cr3t",
            "pkcs11:?pin-value=s3cr3t&pin-value=s3cr3t",
            "pkcs11:pin-value=s3cr3t?pin-value=s3cr3t",
        ] {
            let msg = parse_err(text).to_string();
            assert!(!msg.contains("s3cr3t"), "{msg}");
        }
    }

    #[test]
    fn debug_and_redacted_hide_the_pin() {
        let uri = parse("pkcs11:token=t?pin-source=file:/x&pin-value=s3cr3t&module-name=m");
        let debug = format!("{uri:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert_eq!(
            uri.redacted().to_string(),
            "pkcs11:token=t?pin-source=file:/x&module-name=m"
        );
        assert!(!format!("{:?}", uri.redacted()).contains("s3cr3t"));
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=t?pin-source=file:/x&pin-value=s3cr3t&module-name=m"
        );
        let mut uri = uri;
        assert_eq!(
            uri.take_pin_value().as_deref().map(String::as_str),
            Some("s3cr3t")
        );
        assert_eq!(uri.pin_value(), None);
    }

    #[test]
    fn empty_values_are_kept() {
        let uri = parse("pkcs11:serial=;object=;id=");
        assert_eq!(uri.serial(), Some(""));
        assert_eq!(uri.object(), Some(""));
        assert_eq!(uri.id(), Some(&[][..]));
        assert_eq!(uri.to_string(), "pkcs11:serial=;id=;object=");
    }

    #[test]
    fn skips_empty_segments() {
        let uri = parse("pkcs11:token=a;;object=b;?&pin-source=x&");
        assert_eq!(uri.to_string(), "pkcs11:token=a;object=b?pin-source=x");
        assert_eq!(parse("pkcs11:?").to_string(), "pkcs11:");
    }

    #[test]
    fn library_version_forms() {
        assert_eq!(
            parse("pkcs11:library-version=3").library_version(),
            Some((3, 0))
        );
        assert_eq!(
            parse("pkcs11:library-version=1.23").library_version(),
            Some((1, 23))
        );
        assert_eq!(
            parse("pkcs11:library-version=255.255").library_version(),
            Some((255, 255))
        );
        assert_eq!(
            parse("pkcs11:library-version=1.05").to_string(),
            "pkcs11:library-version=1.5"
        );
    }

    fn token<'a>(label: &'a [u8], serial: &'a [u8]) -> TokenView<'a> {
        TokenView {
            label,
            manufacturer: b"SoftHSM project                 ",
            model: b"SoftHSM v2      ",
            serial,
        }
    }

    #[test]
    fn matches_padded_token_fields() {
        let tok = token(b"my token                        ", b"9a3e1c2d0b8f7a6e");
        assert!(parse("pkcs11:").matches_token(&tok));
        assert!(parse("pkcs11:token=my%20token").matches_token(&tok));
        assert!(parse("pkcs11:token=my%20token;model=SoftHSM%20v2").matches_token(&tok));
        assert!(parse("pkcs11:manufacturer=SoftHSM%20project").matches_token(&tok));
        assert!(parse("pkcs11:serial=9a3e1c2d0b8f7a6e").matches_token(&tok));
        assert!(!parse("pkcs11:token=my").matches_token(&tok));
        assert!(!parse("pkcs11:token=My%20token").matches_token(&tok));
        assert!(!parse("pkcs11:serial=").matches_token(&tok));
        let nul_padded = token(b"my token\0\0\0\0", b"                ");
        assert!(parse("pkcs11:token=my%20token;serial=").matches_token(&nul_padded));
        // Object attributes do not restrict the token.
        assert!(parse("pkcs11:token=my%20token;object=k;type=cert").matches_token(&tok));
    }

    #[test]
    fn unknown_path_attributes_match_nothing() {
        let tok = token(b"t", b"s");
        let uri = parse("pkcs11:token=t;x-vendor=1");
        assert!(uri.has_unknown_path_attributes());
        assert!(!uri.matches_token(&tok));
        assert!(!uri.matches_slot(&SlotView::default()));
        assert!(!uri.matches_library(&LibraryView::default()));
        assert!(!uri.matches_object(&ObjectView::default()));
        // Unknown query attributes do not matter.
        assert!(parse("pkcs11:token=t?x-vendor=1").matches_token(&tok));
    }

    #[test]
    fn matches_slots_and_libraries() {
        let slot = SlotView {
            id: 17,
            description: b"SoftHSM slot ID 0x0   ",
            manufacturer: b"SoftHSM",
        };
        assert!(parse("pkcs11:slot-id=17").matches_slot(&slot));
        assert!(!parse("pkcs11:slot-id=18").matches_slot(&slot));
        assert!(parse("pkcs11:slot-description=SoftHSM%20slot%20ID%200x0").matches_slot(&slot));
        assert!(parse("pkcs11:slot-manufacturer=SoftHSM").matches_slot(&slot));
        assert!(!parse("pkcs11:slot-manufacturer=Other").matches_slot(&slot));

        let lib = LibraryView {
            manufacturer: b"PKCS#11 Kit                     ",
            description: b"PKCS#11 Kit Proxy Module        ",
            version: (1, 1),
        };
        assert!(parse("pkcs11:library-manufacturer=PKCS%2311%20Kit").matches_library(&lib));
        assert!(parse("pkcs11:library-version=1.1").matches_library(&lib));
        assert!(!parse("pkcs11:library-version=1").matches_library(&lib));
        assert!(
            parse("pkcs11:library-description=PKCS%2311%20Kit%20Proxy%20Module")
                .matches_library(&lib)
        );
    }

    #[test]
    fn matches_objects_exactly() {
        let obj = ObjectView {
            label: Some(b"key1"),
            id: Some(&[1, 2, 0xff]),
            class: Some(ObjectClass::PrivateKey),
        };
        assert!(parse("pkcs11:object=key1;id=%01%02%FF;type=private").matches_object(&obj));
        assert!(parse("pkcs11:token=whatever").matches_object(&obj));
        assert!(!parse("pkcs11:object=key").matches_object(&obj));
        assert!(!parse("pkcs11:id=%01%02").matches_object(&obj));
        assert!(!parse("pkcs11:type=public").matches_object(&obj));
        let unknown = ObjectView::default();
        assert!(parse("pkcs11:").matches_object(&unknown));
        assert!(!parse("pkcs11:object=key1").matches_object(&unknown));
        assert!(!parse("pkcs11:type=private").matches_object(&unknown));
    }

    #[test]
    fn builds_object_uris() {
        let tok = token(b"my token                        ", b"9a3e1c2d0b8f7a6e");
        let obj = ObjectView {
            label: Some(b"k;1"),
            id: Some(&[0xab]),
            class: Some(ObjectClass::Certificate),
        };
        let uri = Pkcs11Uri::for_object(&tok, &obj).unwrap();
        assert_eq!(
            uri.to_string(),
            "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=9a3e1c2d0b8f7a6e;\
             token=my%20token;id=%AB;object=k%3B1;type=cert"
        );
        assert!(uri.matches_token(&tok));
        assert!(uri.matches_object(&obj));
        assert_eq!(uri.to_string().parse::<Pkcs11Uri>().unwrap(), uri);

        let blank = TokenView {
            label: b"    ",
            ..TokenView::default()
        };
        assert_eq!(Pkcs11Uri::for_token(&blank).unwrap().to_string(), "pkcs11:");
        let bad = TokenView {
            label: b"\xff",
            ..TokenView::default()
        };
        assert!(matches!(
            Pkcs11Uri::for_token(&bad),
            Err(Error::NotUtf8 { .. })
        ));
        let bad_label = ObjectView {
            label: Some(b"\xff"),
            ..ObjectView::default()
        };
        assert!(Pkcs11Uri::for_object(&TokenView::default(), &bad_label).is_err());
    }

    #[test]
    fn setters_round_trip() {
        let uri = Pkcs11Uri::new()
            .with_token("t/1")
            .with_manufacturer("m")
            .with_serial("s")
            .with_model("mo")
            .with_library_manufacturer("lm")
            .with_library_description("ld")
            .with_library_version(2, 40)
            .with_slot_id(u64::MAX)
            .with_slot_description("sd")
            .with_slot_manufacturer("sm")
            .with_object("o&p")
            .with_id(vec![0, 1])
            .with_object_type(ObjectClass::SecretKey)
            .with_pin_source("file:/a b")
            .with_pin_value("1&2")
            .with_module_name("mn")
            .with_module_path("/m p")
            .with_query_attribute("write-protected", "yes")
            .unwrap();
        assert!(uri.is_write_protected());
        assert!(uri.has_slot_attributes() && uri.has_library_attributes());
        let text = uri.to_string();
        assert_eq!(
            text,
            "pkcs11:model=mo;manufacturer=m;serial=s;token=t%2F1;id=%00%01;object=o&p;\
             type=secret-key;library-manufacturer=lm;library-description=ld;\
             library-version=2.40;slot-manufacturer=sm;slot-description=sd;\
             slot-id=18446744073709551615?pin-source=file:/a%20b&pin-value=1%262&\
             module-name=mn&module-path=/m%20p&write-protected=yes"
        );
        assert_eq!(text.parse::<Pkcs11Uri>().unwrap(), uri);
        assert_eq!(uri.clone().without_pin_value().pin_value(), None);
        assert!(
            Pkcs11Uri::new()
                .with_query_attribute("pin-value", "1")
                .is_err()
        );
        assert!(Pkcs11Uri::new().with_query_attribute("a=b", "1").is_err());
    }

    #[test]
    fn object_class_values() {
        for v in 0..=4 {
            let class = ObjectClass::from_ck(v).unwrap();
            assert_eq!(class.ck_value(), v);
            assert_eq!(u64::from(class), v);
            assert_eq!(ObjectClass::from_uri_name(class.uri_name()), Some(class));
            assert_eq!(class.to_string(), class.uri_name());
        }
        assert_eq!(ObjectClass::from_ck(5), None);
        assert_eq!(ObjectClass::from_uri_name("otp"), None);
    }

    #[test]
    fn trims_only_trailing_padding() {
        assert_eq!(trim_padding(b"  a  \0 "), b"  a");
        assert_eq!(trim_padding(b"   "), b"");
        assert_eq!(trim_padding(b""), b"");
    }
}
