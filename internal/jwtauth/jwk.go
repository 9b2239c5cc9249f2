package jwtauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// Algorithm names (RFC 7518).
const (
	AlgES256 = "ES256"
	AlgES384 = "ES384"
	AlgRS256 = "RS256"
)

// minRSABits is the smallest RSA modulus accepted from a JWKS.
const minRSABits = 2048

// PublicKey is one verification key: its kid, the algorithm it verifies and
// the key itself (*ecdsa.PublicKey or *rsa.PublicKey). Values are immutable
// once built and safe to share between goroutines.
type PublicKey struct {
	KID string
	Alg string
	Key crypto.PublicKey
}

// JWK is the JSON form of a public key (RFC 7517). Only public members are
// modelled: a JWKS carrying private members ("d", "p", ...) is refused.
type JWK struct {
	Kty string `json:"kty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	KID string `json:"kid,omitempty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	// D is decoded only to refuse documents that leak private keys.
	D string `json:"d,omitempty"`
}

// JWKS is a JSON Web Key Set document.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

var b64 = base64.RawURLEncoding

// publicJWK returns the JWK form of an ECDSA public key.
func publicJWK(kid, alg string, pub *ecdsa.PublicKey) (JWK, error) {
	crv, size, err := curveInfo(pub.Curve)
	if err != nil {
		return JWK{}, err
	}
	raw, err := pub.Bytes() // 0x04 || X || Y, fixed width
	if err != nil {
		return JWK{}, fmt.Errorf("encode public key: %w", err)
	}
	return JWK{
		Kty: "EC", Use: "sig", Alg: alg, KID: kid, Crv: crv,
		X: b64.EncodeToString(raw[1 : 1+size]),
		Y: b64.EncodeToString(raw[1+size:]),
	}, nil
}

func curveInfo(c elliptic.Curve) (name string, size int, err error) {
	switch c {
	case elliptic.P256():
		return "P-256", 32, nil
	case elliptic.P384():
		return "P-384", 48, nil
	}
	return "", 0, fmt.Errorf("unsupported curve %s", c.Params().Name)
}

// Thumbprint returns the RFC 7638 SHA-256 thumbprint of a public key,
// base64url without padding. It is the kid of every key petmesh generates.
func Thumbprint(pub crypto.PublicKey) (string, error) {
	var canonical []byte
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		j, err := publicJWK("", "", k)
		if err != nil {
			return "", err
		}
		// Members in lexicographic order, no whitespace (RFC 7638 §3.2).
		canonical = fmt.Appendf(nil, `{"crv":%q,"kty":"EC","x":%q,"y":%q}`, j.Crv, j.X, j.Y)
	case *rsa.PublicKey:
		e := big.NewInt(int64(k.E)).Bytes()
		canonical = fmt.Appendf(nil, `{"e":%q,"kty":"RSA","n":%q}`, b64.EncodeToString(e), b64.EncodeToString(k.N.Bytes()))
	default:
		return "", fmt.Errorf("unsupported key type %T", pub)
	}
	sum := sha256.Sum256(canonical)
	return b64.EncodeToString(sum[:]), nil
}

// ParseJWKS decodes a JWKS document into verification keys by kid. Keys
// that are not for signatures ("use" other than "sig"), of an unknown type
// or without a kid are skipped; a key with a supported type but bad
// parameters, a private member or a duplicate kid fails the whole document,
// because such a document is not one a sane issuer publishes.
func ParseJWKS(data []byte) (map[string]*PublicKey, error) {
	var doc JWKS
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("decode jwks: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`decode jwks: missing "keys"`)
	}
	out := make(map[string]*PublicKey, len(doc.Keys))
	for i, j := range doc.Keys {
		if j.KID == "" || (j.Use != "" && j.Use != "sig") {
			continue
		}
		if j.D != "" {
			return nil, fmt.Errorf("jwks key %d (%s): contains private key material", i, j.KID)
		}
		k, err := j.PublicKey()
		if errors.Is(err, errUnsupportedKty) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("jwks key %d (%s): %w", i, j.KID, err)
		}
		if _, dup := out[k.KID]; dup {
			return nil, fmt.Errorf("jwks key %d: duplicate kid %q", i, j.KID)
		}
		out[k.KID] = k
	}
	return out, nil
}

var errUnsupportedKty = errors.New("unsupported key type")

// PublicKey converts the JWK to a verification key. The algorithm is taken
// from "alg" when present and must agree with the key type; otherwise it
// is implied by the curve (ES256/ES384) or the type (RS256).
func (j JWK) PublicKey() (*PublicKey, error) {
	switch j.Kty {
	case "EC":
		var curve elliptic.Curve
		var alg string
		var size int
		switch j.Crv {
		case "P-256":
			curve, alg, size = elliptic.P256(), AlgES256, 32
		case "P-384":
			curve, alg, size = elliptic.P384(), AlgES384, 48
		default:
			return nil, fmt.Errorf("unsupported curve %q", j.Crv)
		}
		if j.Alg != "" && j.Alg != alg {
			return nil, fmt.Errorf("alg %q does not match curve %s", j.Alg, j.Crv)
		}
		x, errX := b64.DecodeString(j.X)
		y, errY := b64.DecodeString(j.Y)
		if errX != nil || errY != nil || len(x) != size || len(y) != size {
			return nil, errors.New("bad EC coordinates")
		}
		raw := make([]byte, 0, 1+2*size)
		raw = append(append(append(raw, 4), x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
		if err != nil {
			return nil, fmt.Errorf("bad EC point: %w", err)
		}
		return &PublicKey{KID: j.KID, Alg: alg, Key: pub}, nil
	case "RSA":
		if j.Alg != "" && j.Alg != AlgRS256 {
			return nil, fmt.Errorf("unsupported RSA alg %q", j.Alg)
		}
		n, errN := b64.DecodeString(j.N)
		e, errE := b64.DecodeString(j.E)
		if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
			return nil, errors.New("bad RSA parameters")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; want at least %d", pub.N.BitLen(), minRSABits)
		}
		if pub.E < 3 || pub.E%2 == 0 {
			return nil, fmt.Errorf("bad RSA exponent %d", pub.E)
		}
		return &PublicKey{KID: j.KID, Alg: AlgRS256, Key: pub}, nil
	}
	return nil, errUnsupportedKty
}
