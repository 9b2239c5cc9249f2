package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/petmesh/petmesh/internal/atomicfile"
	"github.com/petmesh/petmesh/internal/periodic"
)

// KeyStore defaults.
const (
	DefaultRotationInterval = 24 * time.Hour
	DefaultMaxTokenLifetime = time.Hour
	DefaultLeeway           = 30 * time.Second
	DefaultJWKSMaxAge       = 5 * time.Minute
	DefaultMaintainInterval = time.Minute
)

// KeyStoreConfig configures a KeyStore. Zero durations take the defaults.
type KeyStoreConfig struct {
	// Dir holds one 0600 file per key, <kid>.json. Created 0700 if missing.
	Dir string
	// RotationInterval is how long a key signs before the next one takes over.
	RotationInterval time.Duration
	// MaxTokenLifetime bounds the TTL of every token signed with these keys
	// (Issuer refuses a longer TTL). A retired key is kept for
	// MaxTokenLifetime+Leeway, so every token it signed can still be verified.
	MaxTokenLifetime time.Duration
	// Leeway is the clock skew allowed by verifiers (see VerifierConfig.Leeway).
	Leeway time.Duration
	// JWKSMaxAge is the Cache-Control max-age of the JWKS document. It must be
	// shorter than RotationInterval so that caches see the next key before it
	// starts signing.
	JWKSMaxAge time.Duration
	// MaintainInterval is how often Run checks for rotation and expiry.
	MaintainInterval time.Duration
	// Now is the clock; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
}

func (c *KeyStoreConfig) setDefaults() error {
	if c.Dir == "" {
		return errors.New("key store: dir is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RotationInterval, DefaultRotationInterval)
	def(&c.MaxTokenLifetime, DefaultMaxTokenLifetime)
	def(&c.Leeway, DefaultLeeway)
	def(&c.JWKSMaxAge, DefaultJWKSMaxAge)
	def(&c.MaintainInterval, DefaultMaintainInterval)
	switch {
	case c.RotationInterval < time.Second:
		return fmt.Errorf("key store: rotation interval %s: want at least 1s", c.RotationInterval)
	case c.MaxTokenLifetime < time.Second:
		return fmt.Errorf("key store: max token lifetime %s: want at least 1s", c.MaxTokenLifetime)
	case c.Leeway < 0:
		return fmt.Errorf("key store: leeway %s: must not be negative", c.Leeway)
	case c.JWKSMaxAge < 0 || c.JWKSMaxAge >= c.RotationInterval:
		return fmt.Errorf("key store: jwks max age %s: want at least 0 and below the rotation interval %s", c.JWKSMaxAge, c.RotationInterval)
	case c.MaintainInterval <= 0:
		return fmt.Errorf("key store: maintain interval %s: must be positive", c.MaintainInterval)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// KeyState is where a key is in its life.
type KeyState string

// Key states: a key is published as "next" one rotation before it signs,
// is "active" while it signs, and "retired" while the tokens it signed may
// still be alive; then its file is removed.
const (
	KeyNext    KeyState = "next"
	KeyActive  KeyState = "active"
	KeyRetired KeyState = "retired"
)

// KeyInfo describes one key of a KeyStore, without its private part.
type KeyInfo struct {
	KID         string
	State       KeyState
	CreatedAt   time.Time
	ActivatedAt time.Time
	RetiredAt   time.Time
}

type signingKey struct {
	KeyInfo
	priv *ecdsa.PrivateKey
	pub  *PublicKey
}

// keySet is an immutable snapshot read lock-free by the hot path.
type keySet struct {
	active *signingKey
	verify map[string]*PublicKey
	infos  []KeyInfo
	jwks   []byte
	etag   string
}

// KeyStore owns the ES256 signing keys of the local issuer. It is safe for
// concurrent use: readers (signing, verification, JWKS) use an atomic
// snapshot; Maintain and Rotate serialise on a mutex.
type KeyStore struct {
	cfg  KeyStoreConfig
	mu   sync.Mutex // guards keys and the files in cfg.Dir
	keys []*signingKey
	snap atomic.Pointer[keySet]
}

// keyFile is the on-disk form of a key.
type keyFile struct {
	KID         string     `json:"kid"`
	Alg         string     `json:"alg"`
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
	RetiredAt   *time.Time `json:"retired_at,omitempty"`
	PrivateKey  string     `json:"private_key"` // PKCS#8 PEM
}

// OpenKeyStore loads the keys in cfg.Dir, generating them on first start,
// and brings them up to date (Maintain). It refuses key files readable by
// group or others, files whose kid does not match their key, and files it
// cannot parse: a key directory is never silently half-loaded.
func OpenKeyStore(cfg KeyStoreConfig) (*KeyStore, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	ks := &KeyStore{cfg: cfg}
	keys, err := loadKeys(cfg.Dir)
	if err != nil {
		return nil, err
	}
	ks.keys = keys
	if err := ks.Maintain(); err != nil {
		return nil, err
	}
	return ks, nil
}

func loadKeys(dir string) ([]*signingKey, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	var keys []*signingKey
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		k, err := loadKey(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("key store: %s: %w", name, err)
		}
		if name != k.KID+".json" {
			return nil, fmt.Errorf("key store: %s: file name does not match kid %s", name, k.KID)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func loadKey(path string) (*signingKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("mode %04o is too open; want 0600", perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, err
	}
	var kf keyFile
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if kf.Alg != AlgES256 {
		return nil, fmt.Errorf("alg %q: want %s", kf.Alg, AlgES256)
	}
	block, _ := pem.Decode([]byte(kf.PrivateKey))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("private_key: want a PKCS#8 PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private_key: %w", err)
	}
	priv, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || priv.Curve != elliptic.P256() {
		return nil, errors.New("private_key: want an ECDSA P-256 key")
	}
	k, err := newSigningKey(priv, kf.CreatedAt)
	if err != nil {
		return nil, err
	}
	if k.KID != kf.KID {
		return nil, fmt.Errorf("kid %q does not match the key's thumbprint %q", kf.KID, k.KID)
	}
	if kf.ActivatedAt != nil {
		k.ActivatedAt = *kf.ActivatedAt
	}
	if kf.RetiredAt != nil {
		k.RetiredAt = *kf.RetiredAt
	}
	return k, nil
}

func newSigningKey(priv *ecdsa.PrivateKey, created time.Time) (*signingKey, error) {
	kid, err := Thumbprint(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	return &signingKey{
		KeyInfo: KeyInfo{KID: kid, CreatedAt: created},
		priv:    priv,
		pub:     &PublicKey{KID: kid, Alg: AlgES256, Key: &priv.PublicKey},
	}, nil
}

func (k *signingKey) state() KeyState {
	switch {
	case !k.RetiredAt.IsZero():
		return KeyRetired
	case !k.ActivatedAt.IsZero():
		return KeyActive
	}
	return KeyNext
}

// writeKey stores k atomically: a temporary 0600 file in the same
// directory, fsynced, renamed over the final name, then the directory is
// fsynced, so a crash leaves either the old or the new file, never half.
func writeKey(dir string, k *signingKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	kf := keyFile{
		KID: k.KID, Alg: AlgES256, CreatedAt: k.CreatedAt.UTC(),
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
	}
	if !k.ActivatedAt.IsZero() {
		t := k.ActivatedAt.UTC()
		kf.ActivatedAt = &t
	}
	if !k.RetiredAt.IsZero() {
		t := k.RetiredAt.UTC()
		kf.RetiredAt = &t
	}
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	return atomicfile.Write(filepath.Join(dir, k.KID+".json"), append(data, '\n'))
}

func (ks *KeyStore) generate(now time.Time) (*signingKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	k, err := newSigningKey(priv, now)
	if err != nil {
		return nil, err
	}
	if err := writeKey(ks.cfg.Dir, k); err != nil {
		return nil, err
	}
	ks.cfg.Logger.Info("generated signing key", "kid", k.KID)
	return k, nil
}

// Maintain brings the key set up to date at the store's clock: exactly one
// active key (rotating when it has signed for RotationInterval), one next
// key published ahead of use, and retired keys removed once the tokens they
// signed have expired (MaxTokenLifetime+Leeway after retirement). Every
// change is written to disk before it is published.
func (ks *KeyStore) Maintain() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.maintainLocked(false)
}

// Rotate makes the next key active now, regardless of the interval.
func (ks *KeyStore) Rotate() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.maintainLocked(true)
}

func (ks *KeyStore) maintainLocked(force bool) error {
	now := ks.cfg.Now()
	defer ks.publish()

	// Several active keys can only come from a crash mid-rotation: keep the
	// most recently activated one.
	var active []*signingKey
	for _, k := range ks.keys {
		if k.state() == KeyActive {
			active = append(active, k)
		}
	}
	slices.SortFunc(active, func(a, b *signingKey) int {
		if c := b.ActivatedAt.Compare(a.ActivatedAt); c != 0 {
			return c
		}
		return b.CreatedAt.Compare(a.CreatedAt)
	})
	for _, k := range active[min(1, len(active)):] {
		if err := ks.retire(k, now); err != nil {
			return err
		}
	}
	var cur *signingKey
	if len(active) > 0 {
		cur = active[0]
	}
	if cur == nil || force || !now.Before(cur.ActivatedAt.Add(ks.cfg.RotationInterval)) {
		next := ks.newest(KeyNext)
		if next == nil {
			var err error
			if next, err = ks.generate(now); err != nil {
				return err
			}
			ks.keys = append(ks.keys, next)
		}
		// Activate first, then retire: a crash in between leaves two
		// active keys, resolved above on the next start.
		next.ActivatedAt = now
		if err := writeKey(ks.cfg.Dir, next); err != nil {
			next.ActivatedAt = time.Time{}
			return err
		}
		if cur != nil {
			if err := ks.retire(cur, now); err != nil {
				return err
			}
		}
		ks.cfg.Logger.Info("activated signing key", "kid", next.KID)
	}
	if ks.newest(KeyNext) == nil {
		k, err := ks.generate(now)
		if err != nil {
			return err
		}
		ks.keys = append(ks.keys, k)
	}
	grace := ks.cfg.MaxTokenLifetime + ks.cfg.Leeway
	kept := ks.keys[:0]
	var errs []error
	for _, k := range ks.keys {
		if k.state() == KeyRetired && !now.Before(k.RetiredAt.Add(grace)) {
			err := os.Remove(filepath.Join(ks.cfg.Dir, k.KID+".json"))
			if err == nil || errors.Is(err, os.ErrNotExist) {
				ks.cfg.Logger.Info("removed retired signing key", "kid", k.KID)
				continue
			}
			errs = append(errs, fmt.Errorf("remove retired key: %w", err))
		}
		kept = append(kept, k)
	}
	ks.keys = kept
	return errors.Join(errs...)
}

func (ks *KeyStore) retire(k *signingKey, now time.Time) error {
	k.RetiredAt = now
	if err := writeKey(ks.cfg.Dir, k); err != nil {
		k.RetiredAt = time.Time{}
		return err
	}
	ks.cfg.Logger.Info("retired signing key", "kid", k.KID)
	return nil
}

func (ks *KeyStore) newest(s KeyState) *signingKey {
	var best *signingKey
	for _, k := range ks.keys {
		if k.state() == s && (best == nil || k.CreatedAt.After(best.CreatedAt)) {
			best = k
		}
	}
	return best
}

// publish builds and stores a new immutable snapshot from ks.keys.
func (ks *KeyStore) publish() {
	set := &keySet{verify: make(map[string]*PublicKey, len(ks.keys))}
	doc := JWKS{Keys: []JWK{}}
	sorted := slices.Clone(ks.keys)
	slices.SortFunc(sorted, func(a, b *signingKey) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for _, k := range sorted {
		k.State = k.state()
		if k.State == KeyActive {
			set.active = k
		}
		set.verify[k.KID] = k.pub
		set.infos = append(set.infos, k.KeyInfo)
		if j, err := publicJWK(k.KID, AlgES256, &k.priv.PublicKey); err == nil {
			doc.Keys = append(doc.Keys, j)
		}
	}
	set.jwks, _ = json.Marshal(doc)
	sum := sha256.Sum256(set.jwks)
	set.etag = `"` + hex.EncodeToString(sum[:12]) + `"`
	ks.snap.Store(set)
}

// Keys describes the current keys, oldest first.
func (ks *KeyStore) Keys() []KeyInfo { return slices.Clone(ks.snap.Load().infos) }

// signer returns the active key.
func (ks *KeyStore) signer() (*signingKey, error) {
	if k := ks.snap.Load().active; k != nil {
		return k, nil
	}
	return nil, errors.New("key store: no active signing key")
}

// PublicKey implements KeySource: next, active and retired keys verify.
// kid is only ever used as a map key.
func (ks *KeyStore) PublicKey(_ context.Context, kid string) (*PublicKey, error) {
	if k, ok := ks.snap.Load().verify[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// Run calls Maintain every MaintainInterval until ctx is done. Errors are
// logged and retried on the next tick; the current keys keep serving.
func (ks *KeyStore) Run(ctx context.Context) error {
	periodic.Every(ctx, ks.cfg.MaintainInterval, func() {
		if err := ks.Maintain(); err != nil {
			ks.cfg.Logger.ErrorContext(ctx, "key store maintenance failed", "error", err)
		}
	})
	return nil
}

// JWKSHandler serves the public keys (next, active, retired) as a JWKS
// document for GET and HEAD, with Cache-Control max-age JWKSMaxAge and an
// ETag. Mount it at /.well-known/jwks.json.
func (ks *KeyStore) JWKSHandler() http.Handler {
	maxAge := "public, max-age=" + strconv.Itoa(int(ks.cfg.JWKSMaxAge/time.Second))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeMethodNotAllowed(w, r.Method)
			return
		}
		set := ks.snap.Load()
		h := w.Header()
		h.Set("Cache-Control", maxAge)
		h.Set("ETag", set.etag)
		if inm := r.Header.Get("If-None-Match"); inm != "" && inm == set.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(set.jwks)))
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(set.jwks)
		}
	})
}
