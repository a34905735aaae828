package policy

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/oschwald/maxminddb-golang"
)

// GeoDB looks up the country of an address in a MaxMind-format database (GeoLite2-Country, GeoIP2-Country,
// GeoIP2-City, DB-IP's country lite, or any database with a country.iso_code field).
type GeoDB struct {
	r *maxminddb.Reader
}

// OpenGeo opens (memory-maps) a .mmdb file.
func OpenGeo(path string) (*GeoDB, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open geo database %s: %w (give a MaxMind-format .mmdb file, e.g. GeoLite2-Country.mmdb)", path, err)
	}
	return &GeoDB{r: r}, nil
}

// Close releases the database.
func (g *GeoDB) Close() error { return g.r.Close() }

type geoRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
}

// Country returns the ISO 3166-1 alpha-2 code of addr ("" when the database does not know it: private,
// loopback and unlisted addresses).
func (g *GeoDB) Country(addr netip.Addr) (string, error) {
	var rec geoRecord
	if err := g.r.Lookup(net.IP(addr.Unmap().AsSlice()), &rec); err != nil {
		return "", fmt.Errorf("geo lookup of %s: %w", addr, err)
	}
	if rec.Country.ISOCode != "" {
		return rec.Country.ISOCode, nil
	}
	return rec.RegisteredCountry.ISOCode, nil
}
