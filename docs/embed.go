// Package docs holds, besides the documentation, the documents the running agent serves: the HTTP
// gateway's OpenAPI 3.1 description (openapi.yaml, agent/gateway), embedded so that the file in the
// repository is the one served.
package docs

import _ "embed"

//go:embed openapi.yaml
var openapi []byte

// OpenAPI returns docs/openapi.yaml (a copy).
func OpenAPI() []byte { return append([]byte(nil), openapi...) }
