/*
 * every_call.c - make a stock p11-kit-client.so send every RPC call id its generation has.
 *
 *   every_call <p11-kit-client.so>
 *
 * Expects a p11-kit server (reached through P11_KIT_SERVER_ADDRESS) that serves two SoftHSM
 * tokens made by capture.py: "every-call" (user PIN 123456) and "scratch" (SO PIN 87654321),
 * both throwaway test tokens in a temporary directory. Every PKCS#11 call is logged with its
 * CK_RV, one line per call, in a stable format (no handles that vary, no timestamps).
 *
 * Built against Debian's p11-kit 0.24.1 <p11-kit/pkcs11.h> (PKCS#11 2.40); the 3.0 interface
 * (C_GetInterface, the CK_FUNCTION_LIST_3_0 tail) is declared here.
 *
 * The stock clients refuse some things locally (rpc §5.1, §8): mechanisms outside their
 * allow-list, the NULL mechanism on 0.24.1. Everything below uses allow-listed mechanisms:
 * AES_KEY_GEN, RSA_PKCS_KEY_PAIR_GEN, EC_KEY_PAIR_GEN, AES_ECB, SHA256, SHA256_RSA_PKCS,
 * RSA_PKCS on every generation, AES_GCM and ECDH1_DERIVE only where the client has their
 * serializers (0.25+).
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

/* ------------------------------------------------------------ PKCS#11 3.0 declarations */

typedef struct {
	CK_UTF8CHAR *name;
	void *functions;
	CK_FLAGS flags;
} my_interface;

typedef CK_RV (*my_get_interface_fn)(CK_UTF8CHAR *name, CK_VERSION *version,
				     my_interface **iface, CK_FLAGS flags);

typedef CK_SESSION_HANDLE S_;
typedef CK_ULONG U_;

/* CK_FUNCTION_LIST_3_0: the 2.40 list, then these 24 entries (same layout on LP64). */
struct my_function_list_3_0 {
	CK_FUNCTION_LIST v2;
	CK_RV (*C_GetInterfaceList)(my_interface *, U_ *);
	CK_RV (*C_GetInterface)(CK_UTF8CHAR *, CK_VERSION *, my_interface **, CK_FLAGS);
	CK_RV (*C_LoginUser)(S_, CK_USER_TYPE, CK_UTF8CHAR *, U_, CK_UTF8CHAR *, U_);
	CK_RV (*C_SessionCancel)(S_, CK_FLAGS);
	CK_RV (*C_MessageEncryptInit)(S_, CK_MECHANISM *, CK_OBJECT_HANDLE);
	CK_RV (*C_EncryptMessage)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *);
	CK_RV (*C_EncryptMessageBegin)(S_, void *, U_, CK_BYTE *, U_);
	CK_RV (*C_EncryptMessageNext)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *, CK_FLAGS);
	CK_RV (*C_MessageEncryptFinal)(S_);
	CK_RV (*C_MessageDecryptInit)(S_, CK_MECHANISM *, CK_OBJECT_HANDLE);
	CK_RV (*C_DecryptMessage)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *);
	CK_RV (*C_DecryptMessageBegin)(S_, void *, U_, CK_BYTE *, U_);
	CK_RV (*C_DecryptMessageNext)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *, CK_FLAGS);
	CK_RV (*C_MessageDecryptFinal)(S_);
	CK_RV (*C_MessageSignInit)(S_, CK_MECHANISM *, CK_OBJECT_HANDLE);
	CK_RV (*C_SignMessage)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *);
	CK_RV (*C_SignMessageBegin)(S_, void *, U_);
	CK_RV (*C_SignMessageNext)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_ *);
	CK_RV (*C_MessageSignFinal)(S_);
	CK_RV (*C_MessageVerifyInit)(S_, CK_MECHANISM *, CK_OBJECT_HANDLE);
	CK_RV (*C_VerifyMessage)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_);
	CK_RV (*C_VerifyMessageBegin)(S_, void *, U_);
	CK_RV (*C_VerifyMessageNext)(S_, void *, U_, CK_BYTE *, U_, CK_BYTE *, U_);
	CK_RV (*C_MessageVerifyFinal)(S_);
};

/* CK_GCM_MESSAGE_PARAMS (3.0), sent by the client as raw native bytes (rpc §6, ids 68-87). */
struct my_gcm_message_params {
	CK_BYTE *iv;
	CK_ULONG iv_len;
	CK_ULONG iv_fixed_bits;
	CK_ULONG iv_generator;
	CK_BYTE *tag;
	CK_ULONG tag_bits;
};

#ifndef CKF_END_OF_MESSAGE
#define CKF_END_OF_MESSAGE 1UL
#endif

/* ------------------------------------------------------------ logging */

static CK_FUNCTION_LIST *f;
static struct my_function_list_3_0 *f3; /* NULL on 2.40-only clients (0.24.1) */
static int calls, oks;

static const char *rv_name(CK_RV rv)
{
	switch (rv) {
#define N(x) case x: return #x;
	N(CKR_OK) N(CKR_HOST_MEMORY) N(CKR_SLOT_ID_INVALID) N(CKR_GENERAL_ERROR)
	N(CKR_FUNCTION_FAILED) N(CKR_ARGUMENTS_BAD) N(CKR_NO_EVENT) N(CKR_CANT_LOCK)
	N(CKR_ATTRIBUTE_READ_ONLY) N(CKR_ATTRIBUTE_SENSITIVE) N(CKR_ATTRIBUTE_TYPE_INVALID)
	N(CKR_ATTRIBUTE_VALUE_INVALID) N(CKR_DATA_INVALID) N(CKR_DATA_LEN_RANGE)
	N(CKR_DEVICE_ERROR) N(CKR_DEVICE_MEMORY) N(CKR_DEVICE_REMOVED)
	N(CKR_ENCRYPTED_DATA_INVALID) N(CKR_ENCRYPTED_DATA_LEN_RANGE)
	N(CKR_FUNCTION_CANCELED) N(CKR_FUNCTION_NOT_PARALLEL) N(CKR_FUNCTION_NOT_SUPPORTED)
	N(CKR_KEY_HANDLE_INVALID) N(CKR_KEY_SIZE_RANGE) N(CKR_KEY_TYPE_INCONSISTENT)
	N(CKR_KEY_NOT_NEEDED) N(CKR_KEY_CHANGED) N(CKR_KEY_NEEDED)
	N(CKR_KEY_INDIGESTIBLE) N(CKR_KEY_FUNCTION_NOT_PERMITTED) N(CKR_KEY_NOT_WRAPPABLE)
	N(CKR_KEY_UNEXTRACTABLE) N(CKR_MECHANISM_INVALID) N(CKR_MECHANISM_PARAM_INVALID)
	N(CKR_OBJECT_HANDLE_INVALID) N(CKR_OPERATION_ACTIVE) N(CKR_OPERATION_NOT_INITIALIZED)
	N(CKR_PIN_INCORRECT) N(CKR_PIN_INVALID) N(CKR_PIN_LEN_RANGE) N(CKR_PIN_EXPIRED)
	N(CKR_PIN_LOCKED) N(CKR_SESSION_CLOSED) N(CKR_SESSION_COUNT)
	N(CKR_SESSION_HANDLE_INVALID) N(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
	N(CKR_SESSION_READ_ONLY) N(CKR_SESSION_EXISTS) N(CKR_SESSION_READ_ONLY_EXISTS)
	N(CKR_SESSION_READ_WRITE_SO_EXISTS) N(CKR_SIGNATURE_INVALID) N(CKR_SIGNATURE_LEN_RANGE)
	N(CKR_TEMPLATE_INCOMPLETE) N(CKR_TEMPLATE_INCONSISTENT) N(CKR_TOKEN_NOT_PRESENT)
	N(CKR_TOKEN_NOT_RECOGNIZED) N(CKR_TOKEN_WRITE_PROTECTED)
	N(CKR_UNWRAPPING_KEY_HANDLE_INVALID) N(CKR_UNWRAPPING_KEY_SIZE_RANGE)
	N(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT) N(CKR_USER_ALREADY_LOGGED_IN)
	N(CKR_USER_NOT_LOGGED_IN) N(CKR_USER_PIN_NOT_INITIALIZED) N(CKR_USER_TYPE_INVALID)
	N(CKR_USER_ANOTHER_ALREADY_LOGGED_IN) N(CKR_USER_TOO_MANY_TYPES)
	N(CKR_WRAPPED_KEY_INVALID) N(CKR_WRAPPED_KEY_LEN_RANGE) N(CKR_WRAPPING_KEY_HANDLE_INVALID)
	N(CKR_WRAPPING_KEY_SIZE_RANGE) N(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
	N(CKR_RANDOM_SEED_NOT_SUPPORTED) N(CKR_RANDOM_NO_RNG) N(CKR_DOMAIN_PARAMS_INVALID)
	N(CKR_BUFFER_TOO_SMALL) N(CKR_SAVED_STATE_INVALID) N(CKR_INFORMATION_SENSITIVE)
	N(CKR_STATE_UNSAVEABLE) N(CKR_CRYPTOKI_NOT_INITIALIZED)
	N(CKR_CRYPTOKI_ALREADY_INITIALIZED) N(CKR_MUTEX_BAD) N(CKR_MUTEX_NOT_LOCKED)
#undef N
	default: return "?";
	}
}

/* One line per PKCS#11 call: "NN  name(what)  rv=0x.. NAME". */
#define CALL(what, expr)                                                                   \
	do {                                                                                  \
		CK_RV rv_ = (expr);                                                           \
		calls++;                                                                      \
		if (rv_ == CKR_OK)                                                            \
			oks++;                                                                \
		printf("%-72s rv=0x%lx %s\n", what, (unsigned long)rv_, rv_name(rv_));       \
		last_rv = rv_;                                                                \
	} while (0)

static CK_RV last_rv;

static void note(const char *what, unsigned long n)
{
	printf("    %s %lu\n", what, n);
}

/* ------------------------------------------------------------ fixtures */

static const char USER_PIN[] = "123456";       /* every-call token: throwaway test PIN */
static const char SO_PIN[] = "87654321";       /* scratch token: throwaway test SO PIN */
static const char SCRATCH_PIN[] = "111111";    /* set by C_InitPIN on the scratch token */
static const char SCRATCH_PIN2[] = "222222";   /* C_SetPIN changes to this and back */

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static CK_SLOT_ID find_slot(CK_SLOT_ID *slots, CK_ULONG n, const char *label)
{
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO ti;
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		size_t l = strlen(label);
		if (!memcmp(ti.label, label, l) && (l == 32 || ti.label[l] == ' '))
			return slots[i];
	}
	return (CK_SLOT_ID)-1;
}

static void scratch_token(CK_SLOT_ID slot)
{
	CK_SESSION_HANDLE s = 0;
	/* 32 bytes, space padded, NUL terminated: 0.24.1 sends it as `z` (strlen, issue #497),
	 * 0.25+ as a 32-byte `s`. */
	CK_UTF8CHAR label[33];
	memset(label, ' ', 32);
	memcpy(label, "scratch", 7);
	label[32] = 0;

	printf("# scratch token: InitToken (id 9 at version 0, InitToken2 88 at 1+), InitPIN, SetPIN\n");
	CALL("C_InitToken(scratch, SO PIN, label 'scratch')",
	     f->C_InitToken(slot, (CK_UTF8CHAR *)SO_PIN, strlen(SO_PIN), label));
	CALL("C_OpenSession(scratch, RW)",
	     f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
	CALL("C_Login(SO)", f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)SO_PIN, strlen(SO_PIN)));
	CALL("C_InitPIN(111111)",
	     f->C_InitPIN(s, (CK_UTF8CHAR *)SCRATCH_PIN, strlen(SCRATCH_PIN)));
	CALL("C_Logout(SO)", f->C_Logout(s));
	CALL("C_Login(USER, 111111)",
	     f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)SCRATCH_PIN, strlen(SCRATCH_PIN)));
	CALL("C_SetPIN(111111 -> 222222)",
	     f->C_SetPIN(s, (CK_UTF8CHAR *)SCRATCH_PIN, strlen(SCRATCH_PIN),
			 (CK_UTF8CHAR *)SCRATCH_PIN2, strlen(SCRATCH_PIN2)));
	CALL("C_SetPIN(222222 -> 111111, set back)",
	     f->C_SetPIN(s, (CK_UTF8CHAR *)SCRATCH_PIN2, strlen(SCRATCH_PIN2),
			 (CK_UTF8CHAR *)SCRATCH_PIN, strlen(SCRATCH_PIN)));
	CALL("C_Logout(USER)", f->C_Logout(s));
	CALL("C_CloseAllSessions(scratch)", f->C_CloseAllSessions(slot));
}

struct keys {
	CK_OBJECT_HANDLE aes, rsa_pub, rsa_priv, ec_pub, ec_priv, data, copy;
};

static void generate(CK_SESSION_HANDLE s, struct keys *k)
{
	CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
	CK_KEY_TYPE aes = CKK_AES;
	CK_ULONG len32 = 32, bits = 2048;
	CK_BYTE e[] = {1, 0, 1};
	/* DER OID prime256v1 */
	CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

	printf("# keys (session objects)\n");
	CK_MECHANISM kg = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE at[] = {
		{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &aes, sizeof aes},
		{CKA_VALUE_LEN, &len32, sizeof len32}, {CKA_TOKEN, &no, 1},
		{CKA_LABEL, "ec-aes", 6}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1},
		{CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1},
	};
	CALL("C_GenerateKey(AES_KEY_GEN, 256 bits)",
	     f->C_GenerateKey(s, &kg, at, sizeof at / sizeof at[0], &k->aes));

	CK_MECHANISM rg = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE rpub[] = {
		{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof bits},
		{CKA_PUBLIC_EXPONENT, e, sizeof e}, {CKA_LABEL, "ec-rsa", 6},
		{CKA_VERIFY, &yes, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_WRAP, &yes, 1},
		{CKA_VERIFY_RECOVER, &yes, 1},
	};
	CK_ATTRIBUTE rpriv[] = {
		{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_LABEL, "ec-rsa", 6},
		{CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_UNWRAP, &yes, 1},
		{CKA_SIGN_RECOVER, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
	};
	CALL("C_GenerateKeyPair(RSA_PKCS_KEY_PAIR_GEN, 2048)",
	     f->C_GenerateKeyPair(s, &rg, rpub, sizeof rpub / sizeof rpub[0], rpriv,
				  sizeof rpriv / sizeof rpriv[0], &k->rsa_pub, &k->rsa_priv));

	CK_MECHANISM eg = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE epub[] = {
		{CKA_TOKEN, &no, 1}, {CKA_EC_PARAMS, p256, sizeof p256},
		{CKA_LABEL, "ec-p256", 7}, {CKA_VERIFY, &yes, 1},
	};
	CK_ATTRIBUTE epriv[] = {
		{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_LABEL, "ec-p256", 7},
		{CKA_SIGN, &yes, 1}, {CKA_DERIVE, &yes, 1},
	};
	CALL("C_GenerateKeyPair(EC_KEY_PAIR_GEN, P-256)",
	     f->C_GenerateKeyPair(s, &eg, epub, sizeof epub / sizeof epub[0], epriv,
				  sizeof epriv / sizeof epriv[0], &k->ec_pub, &k->ec_priv));
}

static void objects(CK_SESSION_HANDLE s, struct keys *k)
{
	CK_OBJECT_CLASS data = CKO_DATA;
	CK_ULONG size = 0;
	printf("# objects\n");
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &data, sizeof data}, {CKA_TOKEN, &no, 1},
		{CKA_LABEL, "ec-data", 7}, {CKA_APPLICATION, "p11fwd", 6},
		{CKA_VALUE, "every call", 10},
	};
	CALL("C_CreateObject(DATA 'ec-data')", f->C_CreateObject(s, t, 5, &k->data));
	CK_ATTRIBUTE ct[] = {{CKA_LABEL, "ec-data-copy", 12}};
	CALL("C_CopyObject(ec-data, LABEL=ec-data-copy)", f->C_CopyObject(s, k->data, ct, 1, &k->copy));
	CALL("C_GetObjectSize(ec-data)", f->C_GetObjectSize(s, k->data, &size));

	CK_ATTRIBUTE q[] = {{CKA_LABEL, NULL, 0}, {CKA_VALUE, NULL, 0}};
	CALL("C_GetAttributeValue(ec-data-copy: LABEL, VALUE sizes)",
	     f->C_GetAttributeValue(s, k->copy, q, 2));
	char label[64] = {0}, value[64] = {0};
	CK_ATTRIBUTE g[] = {{CKA_LABEL, label, sizeof label - 1}, {CKA_VALUE, value, sizeof value - 1}};
	CALL("C_GetAttributeValue(ec-data-copy: LABEL, VALUE)", f->C_GetAttributeValue(s, k->copy, g, 2));
	if (last_rv == CKR_OK)
		printf("    label='%s' value='%s'\n", label, value);
	CK_ATTRIBUTE nl[] = {{CKA_LABEL, "ec-data-renamed", 15}};
	CALL("C_SetAttributeValue(ec-data-copy: LABEL=ec-data-renamed)",
	     f->C_SetAttributeValue(s, k->copy, nl, 1));

	CK_ATTRIBUTE ft[] = {{CKA_CLASS, &data, sizeof data}};
	CK_OBJECT_HANDLE found[8];
	CK_ULONG n = 0;
	CALL("C_FindObjectsInit(CLASS=DATA)", f->C_FindObjectsInit(s, ft, 1));
	CALL("C_FindObjects(max 8)", f->C_FindObjects(s, found, 8, &n));
	note("found", n);
	CALL("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
	CALL("C_DestroyObject(ec-data-renamed)", f->C_DestroyObject(s, k->copy));
}

static void crypto(CK_SESSION_HANDLE s, struct keys *k)
{
	CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
	CK_MECHANISM rsasha = {CKM_SHA256_RSA_PKCS, NULL, 0};
	CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
	CK_BYTE pt[32], ct[64], out[64], part[64], sig[512], dg[64], buf[512];
	CK_ULONG ctl, outl, partl, sigl, dgl, bufl;
	memset(pt, 0x42, sizeof pt);

	printf("# encrypt / decrypt (AES_ECB)\n");
	CALL("C_EncryptInit(AES_ECB)", f->C_EncryptInit(s, &ecb, k->aes));
	ctl = sizeof ct;
	CALL("C_Encrypt(32 bytes, buf 64)", f->C_Encrypt(s, pt, 32, ct, &ctl));
	CALL("C_EncryptInit(AES_ECB)", f->C_EncryptInit(s, &ecb, k->aes));
	partl = sizeof part;
	CALL("C_EncryptUpdate(32 bytes, buf 64)", f->C_EncryptUpdate(s, pt, 32, part, &partl));
	outl = sizeof out;
	CALL("C_EncryptFinal(buf 64)", f->C_EncryptFinal(s, out, &outl));
	CALL("C_DecryptInit(AES_ECB)", f->C_DecryptInit(s, &ecb, k->aes));
	outl = sizeof out;
	CALL("C_Decrypt(32 bytes, buf 64)", f->C_Decrypt(s, ct, ctl, out, &outl));
	if (last_rv == CKR_OK && outl == 32 && !memcmp(out, pt, 32))
		printf("    plaintext matches\n");
	CALL("C_DecryptInit(AES_ECB)", f->C_DecryptInit(s, &ecb, k->aes));
	outl = sizeof out;
	CALL("C_DecryptUpdate(32 bytes, buf 64)", f->C_DecryptUpdate(s, ct, ctl, out, &outl));
	partl = sizeof part;
	CALL("C_DecryptFinal(buf 64)", f->C_DecryptFinal(s, part, &partl));

	printf("# digest (SHA256), operation state\n");
	CALL("C_DigestInit(SHA256)", f->C_DigestInit(s, &sha));
	dgl = sizeof dg;
	CALL("C_Digest(32 bytes, buf 64)", f->C_Digest(s, pt, 32, dg, &dgl));
	CALL("C_DigestInit(SHA256)", f->C_DigestInit(s, &sha));
	CALL("C_DigestUpdate(32 bytes)", f->C_DigestUpdate(s, pt, 32));
	CALL("C_DigestKey(ec-aes)", f->C_DigestKey(s, k->aes));
	bufl = 0;
	CALL("C_GetOperationState(NULL: size query)", f->C_GetOperationState(s, NULL, &bufl));
	bufl = sizeof buf;
	CALL("C_GetOperationState(buf 512)", f->C_GetOperationState(s, buf, &bufl));
	CK_BYTE state[16] = "operation-state";
	CALL("C_SetOperationState(16 bytes, no keys)", f->C_SetOperationState(s, state, 16, 0, 0));
	dgl = sizeof dg;
	CALL("C_DigestFinal(buf 64)", f->C_DigestFinal(s, dg, &dgl));

	printf("# sign / verify (SHA256_RSA_PKCS), recover (RSA_PKCS)\n");
	CALL("C_SignInit(SHA256_RSA_PKCS)", f->C_SignInit(s, &rsasha, k->rsa_priv));
	sigl = 0;
	CALL("C_Sign(32 bytes, NULL: size query)", f->C_Sign(s, pt, 32, NULL, &sigl));
	note("length", sigl);
	sigl = sizeof sig;
	CALL("C_Sign(32 bytes, buf 512)", f->C_Sign(s, pt, 32, sig, &sigl));
	CALL("C_SignInit(SHA256_RSA_PKCS)", f->C_SignInit(s, &rsasha, k->rsa_priv));
	CALL("C_SignUpdate(16 bytes)", f->C_SignUpdate(s, pt, 16));
	CALL("C_SignUpdate(16 bytes)", f->C_SignUpdate(s, pt + 16, 16));
	bufl = sizeof buf;
	CALL("C_SignFinal(buf 512)", f->C_SignFinal(s, buf, &bufl));
	CALL("C_VerifyInit(SHA256_RSA_PKCS)", f->C_VerifyInit(s, &rsasha, k->rsa_pub));
	CALL("C_Verify(32 bytes, signature)", f->C_Verify(s, pt, 32, sig, sigl));
	CALL("C_VerifyInit(SHA256_RSA_PKCS)", f->C_VerifyInit(s, &rsasha, k->rsa_pub));
	CALL("C_VerifyUpdate(32 bytes)", f->C_VerifyUpdate(s, pt, 32));
	CALL("C_VerifyFinal(signature)", f->C_VerifyFinal(s, buf, bufl));
	CALL("C_SignRecoverInit(RSA_PKCS)", f->C_SignRecoverInit(s, &rsa, k->rsa_priv));
	bufl = sizeof buf;
	CALL("C_SignRecover(32 bytes, buf 512)", f->C_SignRecover(s, pt, 32, buf, &bufl));
	CALL("C_VerifyRecoverInit(RSA_PKCS)", f->C_VerifyRecoverInit(s, &rsa, k->rsa_pub));
	outl = sizeof out;
	CALL("C_VerifyRecover(signature, buf 64)", f->C_VerifyRecover(s, sig, sigl, out, &outl));

	/* SoftHSM runs one operation per session (a second C_*Init gets CKR_OPERATION_ACTIVE) and
	 * has no dual-function calls: each is sent with one operation active and answered
	 * CKR_FUNCTION_NOT_SUPPORTED. */
	printf("# dual-function updates\n");
	CALL("C_DigestInit(SHA256)", f->C_DigestInit(s, &sha));
	partl = sizeof part;
	CALL("C_DigestEncryptUpdate(32 bytes, buf 64)",
	     f->C_DigestEncryptUpdate(s, pt, 32, part, &partl));
	dgl = sizeof dg;
	CALL("C_DigestFinal(buf 64)", f->C_DigestFinal(s, dg, &dgl));
	CALL("C_DecryptInit(AES_ECB)", f->C_DecryptInit(s, &ecb, k->aes));
	partl = sizeof part;
	CALL("C_DecryptDigestUpdate(32 bytes, buf 64)",
	     f->C_DecryptDigestUpdate(s, ct, 32, part, &partl));
	partl = sizeof part;
	CALL("C_DecryptVerifyUpdate(32 bytes, buf 64)",
	     f->C_DecryptVerifyUpdate(s, ct, 32, part, &partl));
	partl = sizeof part;
	CALL("C_DecryptFinal(buf 64)", f->C_DecryptFinal(s, part, &partl));
	CALL("C_SignInit(SHA256_RSA_PKCS)", f->C_SignInit(s, &rsasha, k->rsa_priv));
	partl = sizeof part;
	CALL("C_SignEncryptUpdate(32 bytes, buf 64)",
	     f->C_SignEncryptUpdate(s, pt, 32, part, &partl));
	bufl = sizeof buf;
	CALL("C_SignFinal(buf 512)", f->C_SignFinal(s, buf, &bufl));
}

static void keys_management(CK_SESSION_HANDLE s, struct keys *k)
{
	CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
	CK_BYTE wrapped[512];
	CK_ULONG wl;
	CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
	CK_KEY_TYPE aes = CKK_AES, generic = CKK_GENERIC_SECRET;
	CK_ULONG len32 = 32;

	printf("# wrap / unwrap (RSA_PKCS), derive\n");
	wl = 0;
	CALL("C_WrapKey(RSA_PKCS, rsa pub, ec-aes, NULL: size query)",
	     f->C_WrapKey(s, &rsa, k->rsa_pub, k->aes, NULL, &wl));
	note("length", wl);
	wl = sizeof wrapped;
	CALL("C_WrapKey(RSA_PKCS, rsa pub, ec-aes, buf 512)",
	     f->C_WrapKey(s, &rsa, k->rsa_pub, k->aes, wrapped, &wl));
	CK_ATTRIBUTE ut[] = {
		{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &aes, sizeof aes},
		{CKA_TOKEN, &no, 1}, {CKA_LABEL, "ec-aes-unwrapped", 16}, {CKA_ENCRYPT, &yes, 1},
	};
	CK_OBJECT_HANDLE unwrapped = 0;
	CALL("C_UnwrapKey(RSA_PKCS, rsa priv, wrapped)",
	     f->C_UnwrapKey(s, &rsa, k->rsa_priv, wrapped, wl, ut, 5, &unwrapped));

	/* The peer's public point: CKA_EC_POINT is a DER OCTET STRING; ECDH1 takes the raw point. */
	CK_BYTE point[128];
	CK_ATTRIBUTE pa[] = {{CKA_EC_POINT, point, sizeof point}};
	CALL("C_GetAttributeValue(ec pub: EC_POINT)", f->C_GetAttributeValue(s, k->ec_pub, pa, 1));
	CK_BYTE *raw = point;
	CK_ULONG rawl = pa[0].ulValueLen;
	if (rawl == 67 && point[0] == 0x04 && point[1] == 65) {
		raw += 2;
		rawl -= 2;
	}
	CK_ECDH1_DERIVE_PARAMS ep = {CKD_NULL, 0, NULL, rawl, raw};
	CK_MECHANISM ecdh = {CKM_ECDH1_DERIVE, &ep, sizeof ep};
	CK_ATTRIBUTE dt[] = {
		{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &generic, sizeof generic},
		{CKA_VALUE_LEN, &len32, sizeof len32}, {CKA_TOKEN, &no, 1},
		{CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1},
	};
	CK_OBJECT_HANDLE derived = 0;
	CALL("C_DeriveKey(ECDH1_DERIVE with own pub point) (id 62 at version 0/1, 89 at 2)",
	     f->C_DeriveKey(s, &ecdh, k->ec_priv, dt, 6, &derived));
	if (last_rv == CKR_MECHANISM_INVALID) {
		/* 0.24.1 has no ECDH1 serializer and no allow-listed derivation mechanism: send a
		 * plain one so that C_DeriveKey reaches the server at all (SoftHSM refuses it). */
		CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
		CALL("C_DeriveKey(SHA256: no derivation mechanism is allow-listed in 0.24.1)",
		     f->C_DeriveKey(s, &sha, k->ec_priv, dt, 6, &derived));
	}
	if (derived) {
		CALL("C_DestroyObject(derived)", f->C_DestroyObject(s, derived));
	}
	if (unwrapped) {
		CALL("C_DestroyObject(ec-aes-unwrapped)", f->C_DestroyObject(s, unwrapped));
	}

	printf("# random, slot events, local-only calls\n");
	CK_BYTE seed[16] = "every-call-seed";
	CALL("C_SeedRandom(16 bytes)", f->C_SeedRandom(s, seed, 16));
	CK_BYTE rnd[32];
	CALL("C_GenerateRandom(32)", f->C_GenerateRandom(s, rnd, 32));
	CK_SLOT_ID ev = 0;
	CALL("C_WaitForSlotEvent(CKF_DONT_BLOCK)", f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL));
	CALL("C_GetFunctionStatus (local, not an RPC call)", f->C_GetFunctionStatus(s));
	CALL("C_CancelFunction (local, not an RPC call)", f->C_CancelFunction(s));
}

static void messages(CK_SESSION_HANDLE s, struct keys *k)
{
	CK_BYTE iv[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, aad[4] = {0xaa, 0xbb, 0xcc, 0xdd};
	CK_BYTE tag[16] = {0};
	CK_GCM_PARAMS gp = {iv, 12, 96, aad, 4, 128};
	CK_MECHANISM gcm = {CKM_AES_GCM, &gp, sizeof gp};
	CK_MECHANISM rsasha = {CKM_SHA256_RSA_PKCS, NULL, 0};
	struct my_gcm_message_params mp = {iv, 12, 0, 0 /* CKG_NO_GENERATE */, tag, 128};
	CK_BYTE pt[32], out[64], sig[512];
	CK_ULONG outl, sigl;
	memset(pt, 0x42, sizeof pt);

	printf("# PKCS#11 3.0 (SoftHSM 2.6.1 has none: the server's proxy answers FUNCTION_NOT_SUPPORTED)\n");
	CALL("C_LoginUser(USER, test PIN, 'user')",
	     f3->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR *)USER_PIN, strlen(USER_PIN),
			     (CK_UTF8CHAR *)"user", 4));
	CALL("C_SessionCancel(CKF_ENCRYPT)", f3->C_SessionCancel(s, CKF_ENCRYPT));

	CALL("C_MessageEncryptInit(AES_GCM)", f3->C_MessageEncryptInit(s, &gcm, k->aes));
	outl = sizeof out;
	CALL("C_EncryptMessage(GCM message params, aad 4, 32 bytes, buf 64)",
	     f3->C_EncryptMessage(s, &mp, sizeof mp, aad, 4, pt, 32, out, &outl));
	CALL("C_EncryptMessageBegin(GCM message params, aad 4)",
	     f3->C_EncryptMessageBegin(s, &mp, sizeof mp, aad, 4));
	outl = sizeof out;
	CALL("C_EncryptMessageNext(32 bytes, buf 64, END_OF_MESSAGE)",
	     f3->C_EncryptMessageNext(s, &mp, sizeof mp, pt, 32, out, &outl, CKF_END_OF_MESSAGE));
	CALL("C_MessageEncryptFinal", f3->C_MessageEncryptFinal(s));

	CALL("C_MessageDecryptInit(AES_GCM)", f3->C_MessageDecryptInit(s, &gcm, k->aes));
	outl = sizeof out;
	CALL("C_DecryptMessage(GCM message params, aad 4, 32 bytes, buf 64)",
	     f3->C_DecryptMessage(s, &mp, sizeof mp, aad, 4, pt, 32, out, &outl));
	CALL("C_DecryptMessageBegin(GCM message params, aad 4)",
	     f3->C_DecryptMessageBegin(s, &mp, sizeof mp, aad, 4));
	outl = sizeof out;
	CALL("C_DecryptMessageNext(32 bytes, buf 64, END_OF_MESSAGE)",
	     f3->C_DecryptMessageNext(s, &mp, sizeof mp, pt, 32, out, &outl, CKF_END_OF_MESSAGE));
	CALL("C_MessageDecryptFinal", f3->C_MessageDecryptFinal(s));

	CALL("C_MessageSignInit(SHA256_RSA_PKCS)", f3->C_MessageSignInit(s, &rsasha, k->rsa_priv));
	sigl = sizeof sig;
	CALL("C_SignMessage(no param, 32 bytes, buf 512)",
	     f3->C_SignMessage(s, NULL, 0, pt, 32, sig, &sigl));
	CALL("C_SignMessageBegin(no param)", f3->C_SignMessageBegin(s, NULL, 0));
	sigl = sizeof sig;
	CALL("C_SignMessageNext(no param, 32 bytes, buf 512: last part)",
	     f3->C_SignMessageNext(s, NULL, 0, pt, 32, sig, &sigl));
	CALL("C_MessageSignFinal", f3->C_MessageSignFinal(s));

	memset(sig, 0x5a, 256);
	CALL("C_MessageVerifyInit(SHA256_RSA_PKCS)",
	     f3->C_MessageVerifyInit(s, &rsasha, k->rsa_pub));
	CALL("C_VerifyMessage(no param, 32 bytes, 256-byte signature)",
	     f3->C_VerifyMessage(s, NULL, 0, pt, 32, sig, 256));
	CALL("C_VerifyMessageBegin(no param)", f3->C_VerifyMessageBegin(s, NULL, 0));
	CALL("C_VerifyMessageNext(no param, 32 bytes, 256-byte signature)",
	     f3->C_VerifyMessageNext(s, NULL, 0, pt, 32, sig, 256));
	CALL("C_MessageVerifyFinal", f3->C_MessageVerifyFinal(s));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: every_call <p11-kit-client.so>\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN); /* a dropped connection becomes CKR_DEVICE_ERROR */
	setvbuf(stdout, NULL, _IOLBF, 0);

	void *dl = dlopen(argv[1], RTLD_NOW);
	if (!dl) {
		printf("dlopen: %s\n", dlerror());
		return 1;
	}
	my_get_interface_fn gi = (my_get_interface_fn)dlsym(dl, "C_GetInterface");
	if (gi) {
		CK_VERSION v30 = {3, 0};
		my_interface *iface = NULL;
		CALL("C_GetInterface(\"PKCS 11\", 3.0) (local)",
		     gi((CK_UTF8CHAR *)"PKCS 11", &v30, &iface, 0));
		if (last_rv != CKR_OK) {
			/* 0.26 offers 3.2 and 2.40 only; 3.2's list starts with 3.0's. */
			CALL("C_GetInterface(\"PKCS 11\", NULL: the default) (local)",
			     gi((CK_UTF8CHAR *)"PKCS 11", NULL, &iface, 0));
		}
		if (last_rv != CKR_OK || !iface)
			return 1;
		f3 = iface->functions;
		f = &f3->v2;
		printf("    interface '%s' version %d.%d\n", (char *)iface->name,
		       f->version.major, f->version.minor);
		if (f->version.major < 3)
			return 1;
	} else {
		CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
		if (!gfl)
			return 1;
		CALL("C_GetFunctionList (local; no C_GetInterface in this client)", gfl(&f));
		if (last_rv != CKR_OK)
			return 1;
		printf("    function list version %d.%d\n", f->version.major, f->version.minor);
	}

	printf("# global\n");
	CK_C_INITIALIZE_ARGS ia = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
	CALL("C_Initialize(CKF_OS_LOCKING_OK)", f->C_Initialize(&ia));
	if (last_rv != CKR_OK)
		return 1;
	CK_INFO info;
	CALL("C_GetInfo", f->C_GetInfo(&info));
	if (last_rv == CKR_OK)
		printf("    cryptoki %d.%d '%.32s'\n", info.cryptokiVersion.major,
		       info.cryptokiVersion.minor, info.libraryDescription);
	CK_SLOT_ID slots[8];
	CK_ULONG ns = 0;
	CALL("C_GetSlotList(TRUE, NULL: size query)", f->C_GetSlotList(CK_TRUE, NULL, &ns));
	note("count", ns);
	ns = 8;
	CALL("C_GetSlotList(TRUE, buf 8)", f->C_GetSlotList(CK_TRUE, slots, &ns));
	CK_SLOT_ID main_slot = find_slot(slots, ns, "every-call");
	CK_SLOT_ID scratch = find_slot(slots, ns, "scratch");
	printf("    every-call slot 0x%lx, scratch slot 0x%lx\n", (unsigned long)main_slot,
	       (unsigned long)scratch);
	CK_SLOT_INFO si;
	CALL("C_GetSlotInfo(every-call)", f->C_GetSlotInfo(main_slot, &si));
	CK_TOKEN_INFO ti;
	CALL("C_GetTokenInfo(every-call)", f->C_GetTokenInfo(main_slot, &ti));
	CK_ULONG nm = 0;
	CALL("C_GetMechanismList(NULL: size query)", f->C_GetMechanismList(main_slot, NULL, &nm));
	CK_MECHANISM_TYPE mechs[256];
	nm = 256;
	CALL("C_GetMechanismList(buf 256)", f->C_GetMechanismList(main_slot, mechs, &nm));
	note("mechanisms after the client's allow-list filter:", nm);
	CK_MECHANISM_INFO mi;
	CALL("C_GetMechanismInfo(SHA256_RSA_PKCS)",
	     f->C_GetMechanismInfo(main_slot, CKM_SHA256_RSA_PKCS, &mi));

	scratch_token(scratch);

	printf("# session on every-call\n");
	CK_SESSION_HANDLE s = 0;
	CALL("C_OpenSession(every-call, RW)",
	     f->C_OpenSession(main_slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
	CK_SESSION_INFO sinfo;
	CALL("C_GetSessionInfo", f->C_GetSessionInfo(s, &sinfo));
	CALL("C_Login(USER, test PIN)",
	     f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)USER_PIN, strlen(USER_PIN)));

	struct keys k = {0};
	generate(s, &k);
	objects(s, &k);
	crypto(s, &k);
	keys_management(s, &k);
	if (f3)
		messages(s, &k);

	printf("# teardown\n");
	CALL("C_DestroyObject(ec-data)", f->C_DestroyObject(s, k.data));
	CALL("C_Logout", f->C_Logout(s));
	CALL("C_CloseSession", f->C_CloseSession(s));
	CALL("C_CloseAllSessions(every-call)", f->C_CloseAllSessions(main_slot));
	CALL("C_Finalize", f->C_Finalize(NULL));
	printf("# %d calls, %d returned CKR_OK\n", calls, oks);
	return 0;
}
