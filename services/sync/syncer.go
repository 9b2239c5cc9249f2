// Package syncsvc is the sync service: it copies animals from the
// Petfinder API into the pets service on a schedule or on demand, keeps
// the run history in SQLite, and elects a single executor among
// instances with a Locker.
package syncsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// ErrRunning reports that a run is already executing here or elsewhere.
var ErrRunning = errors.New("a sync run is already running")

// errLockLost is the error of a run whose executor lock was lost.
var errLockLost = errors.New("executor lock lost during the run")

// Metrics are the sync-specific Prometheus metrics.
type Metrics struct {
	Runs            *prometheus.CounterVec
	Duration        prometheus.Histogram
	Upserted        prometheus.Counter
	PetfinderErrors *prometheus.CounterVec
	LastSuccess     prometheus.Gauge
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petmesh_sync_runs_total",
			Help: "Sync runs by result: succeeded, failed, interrupted, or skipped (another executor held the lock)."}, []string{"result"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "petmesh_sync_run_duration_seconds",
			Help: "Duration of finished sync runs.", Buckets: prometheus.ExponentialBuckets(0.5, 2, 14)}),
		Upserted: prometheus.NewCounter(prometheus.CounterOpts{Name: "petmesh_sync_pets_upserted_total",
			Help: "Pets inserted or updated in the pets service."}),
		PetfinderErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petmesh_sync_petfinder_errors_total",
			Help: "Failed Petfinder API attempts by kind (rate_limited, server, network, timeout, unauthorized, client, decode, token)."}, []string{"kind"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petmesh_sync_last_success_timestamp_seconds",
			Help: "Unix time at which the last successful run finished."}),
	}
	// Every result and error kind exists from the start at 0, so that
	// dashboards and alerts see 0 (not no data) until one happens.
	for _, r := range []string{StatusSucceeded, StatusFailed, StatusInterrupted, "skipped"} {
		m.Runs.WithLabelValues(r)
	}
	for _, k := range []string{petfinder.KindRateLimited, petfinder.KindServer, petfinder.KindNetwork, petfinder.KindTimeout,
		petfinder.KindUnauthorized, petfinder.KindClient, petfinder.KindDecode, petfinder.KindToken} {
		m.PetfinderErrors.WithLabelValues(k)
	}
	reg.MustRegister(m.Runs, m.Duration, m.Upserted, m.PetfinderErrors, m.LastSuccess)
	return m
}

// AnimalSource is the Petfinder side (a *petfinder.Client).
type AnimalSource interface {
	Each(ctx context.Context, q petfinder.Query, fn func(ctx context.Context, p *petfinder.Page) error) error
}

// PetsWriter is the pets side (a *PetsClient).
type PetsWriter interface {
	BatchUpsert(ctx context.Context, pets []PetInput) (UpsertResult, error)
}

// Options configure a Syncer.
type Options struct {
	Store     *Store
	Locker    Locker
	Source    AnimalSource
	Pets      PetsWriter
	BatchSize int // default 100
	PageLimit int // default 100
	// Overlap is subtracted from the high-water mark of incremental
	// runs, to catch animals whose publication became visible late.
	Overlap time.Duration
	// FullEvery forces a full run when the last full success is older;
	// 0 disables. Petfinder filters only on published_at, so status
	// changes of older animals are seen only by full runs.
	FullEvery time.Duration
	Instance  string
	Logger    *slog.Logger
	Metrics   *Metrics
	Now       func() time.Time
	// Tracer makes the "sync run" span that holds a run's Petfinder and
	// pets calls; a run asked for by a request is a child of that
	// request's span, so it is in the request's trace. Default: no spans.
	Tracer trace.Tracer
}

// Syncer executes runs, one at a time per process and, through the
// Locker, one at a time across instances. Run owns every run goroutine.
type Syncer struct {
	opts Options
	reqs chan startReq
	done chan struct{}
}

type startReq struct {
	trigger string
	full    bool
	resp    chan startResp
	// parent is the span context of the caller (a POST /sync/runs
	// request's server span), invalid for the scheduler.
	parent trace.SpanContext
}

type startResp struct {
	run RunRecord
	err error
}

// NewSyncer returns a syncer; call Run to make it execute.
func NewSyncer(opts Options) *Syncer {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 100
	}
	if opts.PageLimit <= 0 || opts.PageLimit > petfinder.MaxLimit {
		opts.PageLimit = petfinder.MaxLimit
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if opts.Tracer == nil {
		opts.Tracer = noop.NewTracerProvider().Tracer("")
	}
	return &Syncer{opts: opts, reqs: make(chan startReq), done: make(chan struct{})}
}

// Reconcile marks runs left "running" by a dead process as interrupted,
// if this process can take the executor lock now (then nobody else is
// executing them).
func (s *Syncer) Reconcile(ctx context.Context) error {
	lease, err := s.opts.Locker.TryLock(ctx)
	if errors.Is(err, ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = lease.Release(context.WithoutCancel(ctx)) }()
	n, err := s.opts.Store.MarkInterrupted(ctx, s.opts.Now())
	if n > 0 {
		s.opts.Logger.Warn("marked runs of a stopped process as interrupted", "runs", n)
		s.opts.Metrics.Runs.WithLabelValues(StatusInterrupted).Add(float64(n))
	}
	return err
}

// Trigger asks Run to start a run now and returns it (status running);
// ErrRunning when one is already running.
func (s *Syncer) Trigger(ctx context.Context, trigger string, full bool) (RunRecord, error) {
	req := startReq{trigger: trigger, full: full, resp: make(chan startResp, 1), parent: trace.SpanContextFromContext(ctx)}
	select {
	case s.reqs <- req:
	case <-s.done:
		return RunRecord{}, errors.New("sync executor stopped")
	case <-ctx.Done():
		return RunRecord{}, ctx.Err()
	}
	select {
	case r := <-req.resp:
		return r.run, r.err
	case <-ctx.Done():
		return RunRecord{}, ctx.Err()
	}
}

// Run serves Trigger until ctx is done, then waits for the active run
// (which sees ctx cancelled and is recorded as interrupted).
func (s *Syncer) Run(ctx context.Context) error {
	defer close(s.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	finished := make(chan struct{}, 1)
	active := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-finished:
			active = false
		case req := <-s.reqs:
			if active {
				req.resp <- startResp{err: ErrRunning}
				s.opts.Metrics.Runs.WithLabelValues("skipped").Inc()
				continue
			}
			// The run outlives the request that asked for it: it keeps
			// Run's cancellation, and only the caller's span context,
			// so that its spans and log lines join the caller's trace.
			rctx := ctx
			if req.parent.IsValid() {
				rctx = trace.ContextWithSpanContext(ctx, req.parent)
			}
			run, lease, err := s.begin(rctx, req)
			if err != nil {
				if errors.Is(err, ErrRunning) {
					s.opts.Metrics.Runs.WithLabelValues("skipped").Inc()
				}
				req.resp <- startResp{err: err}
				continue
			}
			active = true
			req.resp <- startResp{run: run}
			wg.Go(func() {
				defer func() { finished <- struct{}{} }()
				s.execute(rctx, run, lease)
			})
		}
	}
}

func newRunID(now time.Time) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("run_%s_%s", now.UTC().Format("20060102T150405.000Z"), hex.EncodeToString(b[:]))
}

// begin takes the lock, reconciles stale runs and records the new run.
func (s *Syncer) begin(ctx context.Context, req startReq) (RunRecord, Lease, error) {
	lease, err := s.opts.Locker.TryLock(ctx)
	if errors.Is(err, ErrLocked) {
		return RunRecord{}, nil, ErrRunning
	}
	if err != nil {
		return RunRecord{}, nil, fmt.Errorf("executor lock: %w", err)
	}
	release := func() { _ = lease.Release(context.WithoutCancel(ctx)) }
	now := s.opts.Now()
	if n, err := s.opts.Store.MarkInterrupted(ctx, now); err != nil {
		release()
		return RunRecord{}, nil, err
	} else if n > 0 {
		s.opts.Metrics.Runs.WithLabelValues(StatusInterrupted).Add(float64(n))
	}
	run := RunRecord{ID: newRunID(now), Status: StatusRunning, Trigger: req.trigger, Full: req.full, StartedAt: now, Instance: s.opts.Instance}
	if !run.Full {
		last, err := s.opts.Store.LastSucceeded(ctx, false)
		switch {
		case errors.Is(err, ErrNotFound) || (err == nil && last.HighWater == nil):
			run.Full = true
		case err != nil:
			release()
			return RunRecord{}, nil, err
		default:
			since := last.HighWater.Add(-s.opts.Overlap)
			run.Since = &since
			run.HighWater = last.HighWater
		}
		if !run.Full && s.opts.FullEvery > 0 {
			lastFull, err := s.opts.Store.LastSucceeded(ctx, true)
			if errors.Is(err, ErrNotFound) || (err == nil && now.Sub(lastFull.StartedAt) >= s.opts.FullEvery) {
				run.Full, run.Since = true, nil
			}
		}
	}
	if err := s.opts.Store.Insert(ctx, run); err != nil {
		release()
		return RunRecord{}, nil, err
	}
	s.opts.Logger.InfoContext(ctx, "sync run started", "run", run.ID, "trigger", run.Trigger, "full", run.Full, "since", run.Since)
	return run, lease, nil
}

func (s *Syncer) execute(ctx context.Context, run RunRecord, lease Lease) {
	ctx, span := s.opts.Tracer.Start(ctx, "sync run", trace.WithAttributes(
		attribute.String("petmesh.sync.run_id", run.ID),
		attribute.String("petmesh.sync.trigger", run.Trigger),
		attribute.Bool("petmesh.sync.full", run.Full)))
	defer span.End()
	rctx, cancel := context.WithCancelCause(ctx)
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-lease.Lost():
			cancel(errLockLost)
		case <-rctx.Done():
		}
	})
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("run panicked: %v", p)
			}
		}()
		err = s.sync(rctx, &run)
	}()
	lost := errors.Is(context.Cause(rctx), errLockLost)
	cancel(nil)
	watch.Wait()

	finished := s.opts.Now()
	run.FinishedAt = &finished
	switch {
	case err == nil:
		run.Status = StatusSucceeded
	case lost:
		run.Status, run.Error = StatusFailed, errLockLost.Error()
	case ctx.Err() != nil:
		run.Status, run.Error = StatusInterrupted, "the process is shutting down"
	default:
		run.Status, run.Error = StatusFailed, err.Error()
	}
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer wcancel()
	if uerr := s.opts.Store.Update(wctx, run); uerr != nil {
		s.opts.Logger.ErrorContext(ctx, "record run outcome", "run", run.ID, "err", uerr)
	}
	if rerr := lease.Release(wctx); rerr != nil {
		s.opts.Logger.WarnContext(ctx, "release executor lock", "err", rerr)
	}
	m := s.opts.Metrics
	m.Runs.WithLabelValues(run.Status).Inc()
	telemetry.Observe(ctx, m.Duration, finished.Sub(run.StartedAt).Seconds()) // exemplar: the run's trace
	if run.Status == StatusSucceeded {
		m.LastSuccess.Set(float64(finished.UnixNano()) / 1e9)
	}
	span.SetAttributes(attribute.String("petmesh.sync.status", run.Status), attribute.Int("petmesh.sync.pages", run.Pages),
		attribute.Int("petmesh.sync.fetched", run.Fetched), attribute.Int("petmesh.sync.upserted", run.Upserted),
		attribute.Int("petmesh.sync.failed", run.Failed))
	if run.Status != StatusSucceeded {
		span.SetStatus(codes.Error, run.Status+": "+run.Error)
	}
	s.opts.Logger.InfoContext(ctx, "sync run finished", "run", run.ID, "status", run.Status, "pages", run.Pages, "fetched", run.Fetched,
		"inserted", run.Inserted, "updated", run.Updated, "unchanged", run.Unchanged, "failed", run.Failed, "error", run.Error)
}

// sync copies animals into pets, updating run as it goes.
func (s *Syncer) sync(ctx context.Context, run *RunRecord) error {
	q := petfinder.Query{Statuses: statuses, Sort: "-recent", Limit: s.opts.PageLimit}
	if !run.Full && run.Since != nil {
		q.After = *run.Since
	}
	var high time.Time
	if run.HighWater != nil {
		high = *run.HighWater
	}
	batch := make([]PetInput, 0, s.opts.BatchSize)
	flush := func(ctx context.Context) error {
		for len(batch) > 0 {
			res, err := s.opts.Pets.BatchUpsert(ctx, batch)
			var rej *RejectedError
			if errors.As(err, &rej) && rej.Index >= 0 && rej.Index < len(batch) {
				s.opts.Logger.WarnContext(ctx, "pets rejected an animal", "run", run.ID, "source_id", batch[rej.Index].SourceID, "field", rej.Field, "err", rej.Message)
				run.Failed++
				batch = append(batch[:rej.Index], batch[rej.Index+1:]...)
				continue
			}
			if err != nil {
				return err
			}
			run.Inserted += res.Inserted
			run.Updated += res.Updated
			run.Unchanged += res.Unchanged
			run.Upserted = run.Inserted + run.Updated
			s.opts.Metrics.Upserted.Add(float64(res.Inserted + res.Updated))
			batch = batch[:0]
		}
		return nil
	}
	err := s.opts.Source.Each(ctx, q, func(ctx context.Context, p *petfinder.Page) error {
		run.Pages++
		run.Fetched += len(p.Animals)
		for _, a := range p.Animals {
			in, err := MapAnimal(a)
			if err != nil {
				run.Failed++
				s.opts.Logger.WarnContext(ctx, "skipping animal", "run", run.ID, "err", err)
				continue
			}
			if in.PublishedAt.After(high) {
				high = in.PublishedAt
			}
			batch = append(batch, in)
			if len(batch) >= s.opts.BatchSize {
				if err := flush(ctx); err != nil {
					return err
				}
			}
		}
		if err := s.opts.Store.Update(ctx, *run); err != nil {
			return err
		}
		return nil
	})
	if err == nil {
		err = flush(ctx)
	}
	if err != nil {
		return err
	}
	if !high.IsZero() {
		run.HighWater = &high
	}
	return nil
}
