package jwtauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// MinBcryptCost is the lowest bcrypt cost accepted in a users or service
// accounts file; DefaultBcryptCost is what HashPassword uses by default.
const (
	MinBcryptCost     = 10
	DefaultBcryptCost = 12
)

// maxPasswordBytes is bcrypt's input limit; longer secrets are refused
// rather than silently truncated.
const maxPasswordBytes = 72

// HashPassword returns the bcrypt hash of password for a users or service
// accounts file. cost 0 means DefaultBcryptCost; below MinBcryptCost is an
// error. The CLI exposes it (e.g. "petctl hash-password").
func HashPassword(password string, cost int) (string, error) {
	if cost == 0 {
		cost = DefaultBcryptCost
	}
	if cost < MinBcryptCost || cost > bcrypt.MaxCost {
		return "", fmt.Errorf("bcrypt cost %d: want %d to %d", cost, MinBcryptCost, bcrypt.MaxCost)
	}
	if password == "" {
		return "", errors.New("password must not be empty")
	}
	if len(password) > maxPasswordBytes {
		return "", fmt.Errorf("password is %d bytes; bcrypt takes at most %d", len(password), maxPasswordBytes)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// User is one entry of the users file.
type User struct {
	Username     string   `json:"username" yaml:"username"`
	PasswordHash string   `json:"password_hash" yaml:"password_hash"`
	Roles        []string `json:"roles" yaml:"roles"`
}

// ServiceAccount is one entry of the service accounts file.
type ServiceAccount struct {
	ClientID   string   `json:"client_id" yaml:"client_id"`
	SecretHash string   `json:"secret_hash" yaml:"secret_hash"`
	Roles      []string `json:"roles" yaml:"roles"`
}

// Credentials is a validated set of principals (users or service
// accounts) by name, with their bcrypt hashes. Immutable after loading.
type Credentials struct {
	byName  map[string]principal
	maxCost int
}

type principal struct {
	hash  []byte
	roles []string
}

// Len returns the number of principals.
func (c *Credentials) Len() int {
	if c == nil {
		return 0
	}
	return len(c.byName)
}

func (c *Credentials) lookup(name string) (principal, bool) {
	if c == nil {
		return principal{}, false
	}
	p, ok := c.byName[name]
	return p, ok
}

// usersFile and serviceAccountsFile are the file layouts:
//
//	users:
//	  - username: alice
//	    password_hash: $2a$12$...
//	    roles: [viewer]
//
//	service_accounts:
//	  - client_id: sync
//	    secret_hash: $2a$12$...
//	    roles: [sync]
type usersFile struct {
	Users []User `json:"users" yaml:"users"`
}

type serviceAccountsFile struct {
	ServiceAccounts []ServiceAccount `json:"service_accounts" yaml:"service_accounts"`
}

// LoadUsers reads and validates a users file (YAML, or JSON when the name
// ends in .json).
func LoadUsers(path string) (*Credentials, error) {
	var f usersFile
	if err := decodeFile(path, &f); err != nil {
		return nil, err
	}
	entries := make([]entry, len(f.Users))
	for i, u := range f.Users {
		entries[i] = entry{name: u.Username, hash: u.PasswordHash, roles: u.Roles}
	}
	c, err := newCredentials(entries, "users", "username", "password_hash")
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	return c, nil
}

// LoadServiceAccounts reads and validates a service accounts file.
func LoadServiceAccounts(path string) (*Credentials, error) {
	var f serviceAccountsFile
	if err := decodeFile(path, &f); err != nil {
		return nil, err
	}
	entries := make([]entry, len(f.ServiceAccounts))
	for i, a := range f.ServiceAccounts {
		entries[i] = entry{name: a.ClientID, hash: a.SecretHash, roles: a.Roles}
	}
	c, err := newCredentials(entries, "service_accounts", "client_id", "secret_hash")
	if err != nil {
		return nil, fmt.Errorf("service accounts file %s: %w", path, err)
	}
	return c, nil
}

// NewUsers builds Credentials from users in memory, validated like a file.
func NewUsers(users []User) (*Credentials, error) {
	entries := make([]entry, len(users))
	for i, u := range users {
		entries[i] = entry{name: u.Username, hash: u.PasswordHash, roles: u.Roles}
	}
	return newCredentials(entries, "users", "username", "password_hash")
}

// NewServiceAccounts builds Credentials from accounts in memory.
func NewServiceAccounts(accounts []ServiceAccount) (*Credentials, error) {
	entries := make([]entry, len(accounts))
	for i, a := range accounts {
		entries[i] = entry{name: a.ClientID, hash: a.SecretHash, roles: a.Roles}
	}
	return newCredentials(entries, "service_accounts", "client_id", "secret_hash")
}

const maxAccountsFile = 4 << 20

func decodeFile(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAccountsFile+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxAccountsFile {
		return fmt.Errorf("%s: larger than %d bytes", path, maxAccountsFile)
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("decode %s: %w", path, err)
		}
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

type entry struct {
	name  string
	hash  string
	roles []string
}

func newCredentials(entries []entry, list, nameField, hashField string) (*Credentials, error) {
	c := &Credentials{byName: make(map[string]principal, len(entries)), maxCost: MinBcryptCost}
	for i, e := range entries {
		at := func(field string) string { return fmt.Sprintf("%s[%d].%s", list, i, field) }
		if err := validName(e.name); err != nil {
			return nil, fmt.Errorf("%s: %w", at(nameField), err)
		}
		if _, dup := c.byName[e.name]; dup {
			return nil, fmt.Errorf("%s: duplicate %q", at(nameField), e.name)
		}
		cost, err := bcrypt.Cost([]byte(e.hash))
		if err != nil {
			return nil, fmt.Errorf("%s: not a bcrypt hash: %w", at(hashField), err)
		}
		if cost < MinBcryptCost {
			return nil, fmt.Errorf("%s: bcrypt cost %d; want at least %d", at(hashField), cost, MinBcryptCost)
		}
		c.maxCost = max(c.maxCost, cost)
		for j, r := range e.roles {
			if err := validRole(r); err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", at("roles"), j, err)
			}
		}
		roles := append([]string{}, e.roles...)
		c.byName[e.name] = principal{hash: []byte(e.hash), roles: roles}
	}
	return c, nil
}

// validName accepts 1-128 printable ASCII characters without spaces,
// commas, quotes or backslashes: names end up in tokens, headers and logs.
func validName(s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%q: want 1 to 128 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == ',' || c == '"' || c == '\\' {
			return fmt.Errorf("%q: character %q not allowed", s, c)
		}
	}
	return nil
}

// validRole accepts [A-Za-z0-9_.:-]{1,64}: roles travel comma-separated in
// the x-petmesh-roles header.
func validRole(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("role %q: want 1 to 64 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':'
		if !ok {
			return fmt.Errorf("role %q: character %q not allowed", s, c)
		}
	}
	return nil
}
