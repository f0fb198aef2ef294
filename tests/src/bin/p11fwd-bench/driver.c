/*
 * p11fwd-bench's OpenSSL driver: loads a key through a provider (p11fwd.so) or an engine
 * (libp11's "pkcs11"), then signs or decrypts N times on T threads and prints per-operation
 * latencies. Compiled by the harness at run time (cc -O2 driver.c -lcrypto -lpthread).
 *
 *   bench-driver provider|engine OP KEY_URI N THREADS [--module PATH] [--pin PIN]
 *                [--pubkey PEM] [--ciphertext FILE]
 *
 *   OP: ec-sign (ECDSA, SHA-256 digest input), rsa-sign (PKCS#1 v1.5, SHA-256 digest input),
 *       rsa-decrypt (PKCS#1 v1.5; --ciphertext made with the public key)
 *
 * Protocol with the harness (stdout, line by line; stdin gates the phases so that the harness
 * can read the relay's round-trip counter between them):
 *   ready <key load ns>          then waits for a line on stdin
 *   warm <ns>                    one operation, checked (signature verified, plaintext compared);
 *                                then waits for a line on stdin
 *   lat <ns> <ns> ...            one line per thread
 *   done <wall ns> <errors>      then waits for a line on stdin, then exits 0
 *   unsupported <reason>         exit 3: the stack cannot do OP (e.g. no decryption)
 *   error <reason>               exit 1
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *op;
static int engine_mode;
static EVP_PKEY *pkey;
static EVP_PKEY *pubkey;
static int per_thread;
static unsigned char ciphertext[1024];
static size_t ciphertext_len;
static const unsigned char expected_plain[] = "p11fwd-bench premaster secret of 48 bytes.......";

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    printf("error %s %s\n", what, buf);
    fflush(stdout);
    exit(1);
}

static void unsupported(const char *what) {
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    printf("unsupported %s %s\n", what, buf);
    fflush(stdout);
    exit(3);
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        exit(0);
}

/* One operation; returns 0 on success. `check` verifies the result (first operation). */
static int one(int check) {
    unsigned char tbs[32];
    unsigned char out[1024];
    size_t outlen = sizeof out;
    int ok = 0;
    memset(tbs, 0x42, sizeof tbs);
    /* Engine keys take the legacy path, as in `openssl pkeyutl -engine pkcs11 -keyform engine`. */
    EVP_PKEY_CTX *ctx =
        engine_mode ? EVP_PKEY_CTX_new(pkey, NULL) : EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!ctx)
        return 1;
    if (strcmp(op, "rsa-decrypt") == 0) {
        if (EVP_PKEY_decrypt_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
            EVP_PKEY_decrypt(ctx, NULL, &outlen, ciphertext, ciphertext_len) <= 0 ||
            EVP_PKEY_decrypt(ctx, out, &outlen, ciphertext, ciphertext_len) <= 0)
            goto end;
        if (check && (outlen != sizeof expected_plain - 1 ||
                      memcmp(out, expected_plain, outlen) != 0))
            goto end;
    } else {
        if (EVP_PKEY_sign_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) <= 0)
            goto end;
        if (strcmp(op, "rsa-sign") == 0 &&
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            goto end;
        if (EVP_PKEY_sign(ctx, NULL, &outlen, tbs, sizeof tbs) <= 0 || outlen > sizeof out ||
            EVP_PKEY_sign(ctx, out, &outlen, tbs, sizeof tbs) <= 0)
            goto end;
        if (check && pubkey) {
            EVP_PKEY_CTX *v = EVP_PKEY_CTX_new_from_pkey(NULL, pubkey, "provider=default");
            int good = v && EVP_PKEY_verify_init(v) > 0 &&
                       EVP_PKEY_CTX_set_signature_md(v, EVP_sha256()) > 0 &&
                       (strcmp(op, "rsa-sign") != 0 ||
                        EVP_PKEY_CTX_set_rsa_padding(v, RSA_PKCS1_PADDING) > 0) &&
                       EVP_PKEY_verify(v, out, outlen, tbs, sizeof tbs) == 1;
            EVP_PKEY_CTX_free(v);
            if (!good)
                goto end;
        }
    }
    ok = 1;
end:
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : 1;
}

struct result {
    uint64_t *lat;
    int errors;
};

static void *worker(void *arg) {
    struct result *r = arg;
    for (int i = 0; i < per_thread; i++) {
        uint64_t t0 = now_ns();
        if (one(0))
            r->errors++;
        r->lat[i] = now_ns() - t0;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s provider|engine OP URI N THREADS [options]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    engine_mode = strcmp(mode, "engine") == 0;
    op = argv[2];
    const char *uri = argv[3];
    per_thread = atoi(argv[4]);
    int threads = atoi(argv[5]);
    const char *module = NULL, *pin = NULL, *pub = NULL, *ct = NULL;
    for (int i = 6; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--module") == 0)
            module = argv[i + 1];
        else if (strcmp(argv[i], "--pin") == 0)
            pin = argv[i + 1];
        else if (strcmp(argv[i], "--pubkey") == 0)
            pub = argv[i + 1];
        else if (strcmp(argv[i], "--ciphertext") == 0)
            ct = argv[i + 1];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pub) {
        FILE *f = fopen(pub, "r");
        if (!f || !(pubkey = PEM_read_PUBKEY(f, NULL, NULL, NULL)))
            die("reading the public key");
        fclose(f);
    }
    if (ct) {
        FILE *f = fopen(ct, "rb");
        if (!f)
            die("reading the ciphertext");
        ciphertext_len = fread(ciphertext, 1, sizeof ciphertext, f);
        fclose(f);
    }

    uint64_t t0 = now_ns();
    if (strcmp(mode, "provider") == 0) {
        if (!OSSL_PROVIDER_load(NULL, "p11fwd"))
            die("loading the p11fwd provider");
        if (!OSSL_PROVIDER_load(NULL, "default"))
            die("loading the default provider");
        OSSL_STORE_CTX *st = OSSL_STORE_open(uri, NULL, NULL, NULL, NULL);
        if (!st)
            die("OSSL_STORE_open");
        OSSL_STORE_expect(st, OSSL_STORE_INFO_PKEY);
        while (!pkey && !OSSL_STORE_eof(st)) {
            OSSL_STORE_INFO *info = OSSL_STORE_load(st);
            if (!info)
                break;
            if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
                pkey = OSSL_STORE_INFO_get1_PKEY(info);
            OSSL_STORE_INFO_free(info);
        }
        OSSL_STORE_close(st);
        if (!pkey)
            die("loading the key from the store");
    } else {
        ENGINE_load_dynamic();
        ENGINE *e = ENGINE_by_id("pkcs11");
        if (!e)
            die("ENGINE_by_id(pkcs11)");
        if (module && !ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module, 0))
            die("MODULE_PATH");
        if (pin && !ENGINE_ctrl_cmd_string(e, "PIN", pin, 0))
            die("PIN");
        if (!ENGINE_init(e))
            die("ENGINE_init");
        pkey = ENGINE_load_private_key(e, uri, NULL, NULL);
        if (!pkey)
            die("ENGINE_load_private_key");
    }
    uint64_t load = now_ns() - t0;
    if (strcmp(op, "rsa-decrypt") == 0) {
        EVP_PKEY_CTX *c = engine_mode ? EVP_PKEY_CTX_new(pkey, NULL)
                                       : EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!c || EVP_PKEY_decrypt_init(c) <= 0)
            unsupported("decryption");
        EVP_PKEY_CTX_free(c);
    }
    printf("ready %llu\n", (unsigned long long)load);
    wait_line();
    uint64_t w0 = now_ns();
    if (one(1))
        die("the first operation failed or gave a wrong result");
    printf("warm %llu\n", (unsigned long long)(now_ns() - w0));
    wait_line();

    pthread_t tid[256];
    struct result res[256];
    if (threads < 1 || threads > 256)
        threads = 1;
    uint64_t start = now_ns();
    for (int t = 0; t < threads; t++) {
        res[t].lat = calloc((size_t)per_thread + 1, sizeof(uint64_t));
        res[t].errors = 0;
        if (pthread_create(&tid[t], NULL, worker, &res[t]) != 0)
            die("pthread_create");
    }
    int errors = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        errors += res[t].errors;
    }
    uint64_t wall = now_ns() - start;
    for (int t = 0; t < threads; t++) {
        printf("lat");
        for (int i = 0; i < per_thread; i++)
            printf(" %llu", (unsigned long long)res[t].lat[i]);
        printf("\n");
    }
    printf("done %llu %d\n", (unsigned long long)wall, errors);
    wait_line();
    return 0;
}
