package transports

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// GRPCCodec is the protobuf codec of the plugin connection on both sides. It is gRPC's own codec except
// for its buffer pool: gRPC's default pool has no tier between 32 KiB and 1 MiB and clears the whole
// buffer on every Get, so every 64 KiB frame cleared 1 MiB on each side (a third of the host's CPU in
// the benchmark). This pool has a tier for every power of two up to 8 MiB. It is used through
// ForceCodecV2/ForceServerCodecV2, so gRPC's process-wide default pool is left alone.
func GRPCCodec() encoding.CodecV2 { return codec{pool: GRPCBufferPool()} }

// GRPCBufferPool is the buffer pool of GRPCCodec and of the plugin connections' transports.
func GRPCBufferPool() mem.BufferPool {
	p, err := mem.NewBinaryTieredBufferPool(8, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
	if err != nil {
		panic(err) // constant exponents
	}
	return p
}

type codec struct{ pool mem.BufferPool }

func (c codec) Name() string { return "proto" }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal: %T is not a proto.Message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // Size was just computed
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := c.pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		c.pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, c.pool)}, nil
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshal: %T is not a proto.Message", v)
	}
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
