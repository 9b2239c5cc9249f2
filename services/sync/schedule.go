package syncsvc

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule says when the next scheduled run is due.
type Schedule interface {
	Next(after time.Time) time.Time
}

// Every is a fixed interval schedule.
type Every time.Duration

// Next implements Schedule.
func (e Every) Next(t time.Time) time.Time { return t.Add(time.Duration(e)) }

// ParseCron parses a standard five-field cron expression (or a
// descriptor such as @daily), evaluated in UTC unless it starts with
// CRON_TZ=.
func ParseCron(expr string) (Schedule, error) {
	s, err := cron.ParseStandard(expr)
	if err != nil {
		return nil, fmt.Errorf("cron expression %q: %w", expr, err)
	}
	return s, nil
}

// Timer is the part of *time.Timer the scheduler uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// Clock makes the scheduler testable without sleeping.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

type wallClock struct{}

type wallTimer struct{ t *time.Timer }

func (w wallTimer) C() <-chan time.Time { return w.t.C }
func (w wallTimer) Stop() bool          { return w.t.Stop() }

func (wallClock) Now() time.Time                 { return time.Now() }
func (wallClock) NewTimer(d time.Duration) Timer { return wallTimer{time.NewTimer(d)} }

// Scheduler fires runs on a schedule. Fire must return promptly (it only
// asks the executor to start a run).
type Scheduler struct {
	Schedule   Schedule
	Jitter     time.Duration // a random delay in [0, Jitter) is added to each tick
	RunAtStart bool
	Clock      Clock
	Rand       func() float64
	Logger     *slog.Logger
	Fire       func(ctx context.Context, trigger string)
}

// Run fires until ctx is done. A panicking Fire is logged and the loop
// goes on.
func (s *Scheduler) Run(ctx context.Context) error {
	clock := s.Clock
	if clock == nil {
		clock = wallClock{}
	}
	rnd := s.Rand
	if rnd == nil {
		rnd = rand.Float64
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if s.RunAtStart {
		s.fire(ctx, logger, TriggerStart)
	}
	for {
		now := clock.Now()
		next := s.Schedule.Next(now)
		if s.Jitter > 0 {
			next = next.Add(time.Duration(rnd() * float64(s.Jitter)))
		}
		logger.Debug("next scheduled sync", "at", next)
		t := clock.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
			s.fire(ctx, logger, TriggerSchedule)
		}
	}
}

func (s *Scheduler) fire(ctx context.Context, logger *slog.Logger, trigger string) {
	defer func() {
		if p := recover(); p != nil {
			logger.Error("scheduled sync panicked", "panic", fmt.Sprint(p))
		}
	}()
	s.Fire(ctx, trigger)
}
