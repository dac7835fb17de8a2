// twins-loadgen: an MQTT load generator for scripts/bench/twins_bench.py.
//
// Python devices top out near 800 messages/s on a 2-core box, far under what the agent is
// asked to take (issue 18: >= 5,000 durable reports/s), so the load comes from this compiled
// tool. It speaks the device protocol of docs/mqtt.md and nothing else.
//
// Reads one JSON job on stdin, prints one JSON result on stdout; progress and errors go to
// stderr. Modes:
//
//   - "raw": D publishers (QoS 1) -> one subscriber on bench/<run>/<i>; each publisher keeps
//     `window` messages in flight between its publish and the subscriber's delivery. The limit
//     of the broker and this machine.
//   - "twin": D onboarded devices, each with its own credential and client id, report
//     {"rid": "r<n>", "patch": {<property>: n}} on edgefleet/devices/<id>/twin/reported
//     (QoS 1) with `window` reports in flight, each in flight until the agent's answer on
//     twin/result (the agent answers after its durable commit). A report without an answer
//     for `resend_after_s`, or answered 503 (outbox full, unavailable), is published again
//     with the same rid, as docs/mqtt.md asks of a careful device.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

type device struct {
	DeviceID string `json:"device_id"`
	Username string `json:"username"`
	Password string `json:"password"`
	ClientID string `json:"client_id"`
}

type job struct {
	Mode         string   `json:"mode"`
	Broker       string   `json:"broker"` // tcp://127.0.0.1:1883
	PerDevice    int      `json:"per_device"`
	Window       int      `json:"window"`
	TimeoutS     float64  `json:"timeout_s"`
	ResendAfterS float64  `json:"resend_after_s"`
	Property     string   `json:"property"`
	Devices      []device `json:"devices"` // twin mode
	// raw mode
	Publishers int    `json:"publishers"`
	Run        string `json:"run"`
	Username   string `json:"username"`
	Password   string `json:"password"`
}

type result struct {
	Messages    int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	PerS        float64 `json:"per_s"`
	AnswerP50Ms float64 `json:"answer_p50_ms"`
	AnswerP99Ms float64 `json:"answer_p99_ms"`
	Resends     int64   `json:"resends"`
	Refused     int64   `json:"refused"`
	Lost        int64   `json:"lost"`
	Error       string  `json:"error,omitempty"`
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "twins-loadgen: "+format+"\n", args...)
}

func connect(broker, user, password, clientID string, cleanSession bool) (mqtt.Client, error) {
	return connectOrdered(broker, user, password, clientID, cleanSession, false)
}

func connectOrdered(broker, user, password, clientID string, cleanSession, ordered bool) (mqtt.Client, error) {
	options := mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(clientID).
		SetUsername(user).
		SetPassword(password).
		SetCleanSession(cleanSession).
		SetAutoReconnect(false).
		SetOrderMatters(ordered).
		SetConnectTimeout(30 * time.Second).
		SetKeepAlive(60 * time.Second).
		SetWriteTimeout(30 * time.Second).
		SetMaxResumePubInFlight(0)
	client := mqtt.NewClient(options)
	token := client.Connect()
	if !token.WaitTimeout(30*time.Second) || token.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", clientID, token.Error())
	}
	return client, nil
}

func percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	sort.Float64s(samples)
	index := int(float64(len(samples)-1) * p / 100)
	return samples[index]
}

func round(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

// ----------------------------------------------------------------------------- raw

// rawPublisher keeps `window` messages in flight; a message the broker drops (mosquitto 2.0.11
// drops QoS 1 messages for a subscriber whose queue count it believes full, and that count
// drifts) frees its slot after `lostAfter` and is counted as lost instead of stalling.
type rawPublisher struct {
	mu      sync.Mutex
	pending map[int]time.Time
	expired map[int]bool
	slots   chan struct{}
}

// delivered notes message n's delivery: 1 when it was in flight, 2 when it had been given
// up as lost (a slow delivery, not a loss: the caller takes it back from the lost count),
// 0 for a duplicate.
func (p *rawPublisher) delivered(n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pending[n]; ok {
		delete(p.pending, n)
		<-p.slots
		return 1
	}
	if p.expired[n] {
		delete(p.expired, n)
		return 2
	}
	return 0
}

func (p *rawPublisher) expire(lostAfter time.Duration) int {
	p.mu.Lock()
	var lost []int
	for n, at := range p.pending {
		if time.Since(at) > lostAfter {
			lost = append(lost, n)
		}
	}
	for _, n := range lost {
		delete(p.pending, n)
		p.expired[n] = true
	}
	p.mu.Unlock()
	for range lost {
		<-p.slots
	}
	return len(lost)
}

func runRaw(j job) (result, error) {
	total := j.PerDevice * j.Publishers
	pubs := make([]*rawPublisher, j.Publishers)
	for i := range pubs {
		pubs[i] = &rawPublisher{
			pending: map[int]time.Time{}, expired: map[int]bool{}, slots: make(chan struct{}, j.Window),
		}
	}
	var received, lost atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	finish := func() {
		if received.Load()+lost.Load() >= int64(total) {
			once.Do(func() { close(done) })
		}
	}
	prefix := "bench/" + j.Run + "/"
	sub, err := connectOrdered(j.Broker, j.Username, j.Password, "raw-sub-"+j.Run, true, true)
	if err != nil {
		return result{}, err
	}
	defer sub.Disconnect(100)
	token := sub.Subscribe(prefix+"#", 1, func(_ mqtt.Client, m mqtt.Message) {
		index, err := strconv.Atoi(strings.TrimPrefix(m.Topic(), prefix))
		var a answer
		if err != nil || index < 0 || index >= len(pubs) || json.Unmarshal(m.Payload(), &a) != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimPrefix(a.Rid, "r"))
		if err != nil {
			return
		}
		switch pubs[index].delivered(n) {
		case 1:
			received.Add(1)
		case 2:
			lost.Add(-1)
			received.Add(1)
		}
		finish()
	})
	if !token.WaitTimeout(30*time.Second) || token.Error() != nil {
		return result{}, fmt.Errorf("subscribe: %v", token.Error())
	}
	publishers := make([]mqtt.Client, j.Publishers)
	for i := range publishers {
		c, err := connect(j.Broker, j.Username, j.Password, fmt.Sprintf("raw-%s-%d", j.Run, i), true)
		if err != nil {
			return result{}, err
		}
		publishers[i] = c
		defer c.Disconnect(100)
	}
	started := time.Now()
	for i, c := range publishers {
		go func(index int, c mqtt.Client) {
			topic := prefix + strconv.Itoa(index)
			p := pubs[index]
			for n := 1; n <= j.PerDevice; n++ {
				p.slots <- struct{}{}
				p.mu.Lock()
				p.pending[n] = time.Now()
				p.mu.Unlock()
				c.Publish(topic, 1, false, fmt.Sprintf(`{"rid":"r%d","patch":{"switchCount":%d}}`, n, n))
			}
		}(i, c)
	}
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.After(time.Duration(j.TimeoutS * float64(time.Second)))
	lostAfter := time.Duration(j.ResendAfterS * float64(time.Second))
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-ticker.C:
			for _, p := range pubs {
				lost.Add(int64(p.expire(lostAfter)))
			}
			finish()
		case <-deadline:
			return result{}, fmt.Errorf("raw: %d of %d delivered before the timeout", received.Load(), total)
		}
	}
	seconds := time.Since(started).Seconds()
	delivered := int(received.Load())
	return result{
		Messages: delivered, Seconds: round(seconds*10) / 10, PerS: round(float64(delivered) / seconds),
		Lost: lost.Load(),
	}, nil
}

// ----------------------------------------------------------------------------- twin

type answer struct {
	Rid  string `json:"rid"`
	Code int    `json:"code"`
}

type reporter struct {
	job         *job
	dev         device
	client      mqtt.Client
	mu          sync.Mutex
	sentAt      map[int]time.Time
	outstanding map[int]bool
	answered    int
	latencies   []float64
	progress    chan struct{}
	resends     *atomic.Int64
	refused     *atomic.Int64
}

func (r *reporter) topic(op string) string { return "edgefleet/devices/" + r.dev.DeviceID + "/" + op }

func (r *reporter) publish(n int) {
	body := fmt.Sprintf(`{"rid":"r%d","patch":{%q:%d}}`, n, r.job.Property, n)
	r.client.Publish(r.topic("twin/reported"), 1, false, body)
}

func (r *reporter) onAnswer(_ mqtt.Client, m mqtt.Message) {
	var a answer
	if json.Unmarshal(m.Payload(), &a) != nil || !strings.HasPrefix(a.Rid, "r") {
		return
	}
	n, err := strconv.Atoi(a.Rid[1:])
	if err != nil {
		return
	}
	if a.Code == 503 {
		r.refused.Add(1)
		r.resends.Add(1)
		go func() { time.Sleep(100 * time.Millisecond); r.publish(n) }()
		return
	}
	r.mu.Lock()
	if !r.outstanding[n] {
		r.mu.Unlock()
		return
	}
	delete(r.outstanding, n)
	r.answered++
	r.latencies = append(r.latencies, float64(time.Since(r.sentAt[n]).Microseconds())/1000)
	r.mu.Unlock()
	select {
	case r.progress <- struct{}{}:
	default:
	}
}

func (r *reporter) run(wg *sync.WaitGroup) {
	defer wg.Done()
	next := 1
	resendAfter := time.Duration(r.job.ResendAfterS * float64(time.Second))
	lastProgress := time.Now()
	for {
		r.mu.Lock()
		if r.answered >= r.job.PerDevice {
			r.mu.Unlock()
			return
		}
		var send []int
		for next <= r.job.PerDevice && len(r.outstanding) < r.job.Window {
			r.outstanding[next] = true
			r.sentAt[next] = time.Now()
			send = append(send, next)
			next++
		}
		r.mu.Unlock()
		for _, n := range send {
			r.publish(n)
		}
		select {
		case <-r.progress:
			lastProgress = time.Now()
		case <-time.After(500 * time.Millisecond):
		}
		if time.Since(lastProgress) > resendAfter {
			r.mu.Lock()
			var again []int
			for n := range r.outstanding {
				again = append(again, n)
			}
			r.mu.Unlock()
			sort.Ints(again)
			r.resends.Add(int64(len(again)))
			for _, n := range again {
				r.publish(n)
			}
			lastProgress = time.Now()
		}
	}
}

func runTwin(j job) (result, error) {
	var resends, refused atomic.Int64
	reporters := make([]*reporter, len(j.Devices))
	for i, d := range j.Devices {
		client, err := connect(j.Broker, d.Username, d.Password, d.ClientID, true)
		if err != nil {
			return result{}, err
		}
		defer client.Disconnect(100)
		r := &reporter{
			job: &j, dev: d, client: client, sentAt: map[int]time.Time{},
			outstanding: map[int]bool{}, progress: make(chan struct{}, 1),
			resends: &resends, refused: &refused,
		}
		token := client.Subscribe(r.topic("twin/result"), 1, r.onAnswer)
		if !token.WaitTimeout(30*time.Second) || token.Error() != nil {
			return result{}, fmt.Errorf("subscribe %s: %v", d.DeviceID, token.Error())
		}
		reporters[i] = r
	}
	var wg sync.WaitGroup
	started := time.Now()
	for _, r := range reporters {
		wg.Add(1)
		go r.run(&wg)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Duration(j.TimeoutS * float64(time.Second))):
		answered := 0
		for _, r := range reporters {
			r.mu.Lock()
			answered += r.answered
			r.mu.Unlock()
		}
		return result{}, fmt.Errorf("twin: %d of %d answered before the timeout", answered, j.PerDevice*len(reporters))
	}
	seconds := time.Since(started).Seconds()
	var latencies []float64
	for _, r := range reporters {
		latencies = append(latencies, r.latencies...)
	}
	total := j.PerDevice * len(reporters)
	return result{
		Messages: total, Seconds: round(seconds*10) / 10, PerS: round(float64(total) / seconds),
		AnswerP50Ms: round(percentile(latencies, 50)), AnswerP99Ms: round(percentile(latencies, 99)),
		Resends: resends.Load(), Refused: refused.Load(),
	}, nil
}

func main() {
	var j job
	if err := json.NewDecoder(os.Stdin).Decode(&j); err != nil {
		logf("bad job on stdin: %v", err)
		os.Exit(2)
	}
	if j.Window < 1 || j.PerDevice < 1 || j.TimeoutS <= 0 {
		logf("window, per_device and timeout_s must be positive")
		os.Exit(2)
	}
	if j.ResendAfterS <= 0 {
		j.ResendAfterS = 3
	}
	var out result
	var err error
	switch j.Mode {
	case "raw":
		out, err = runRaw(j)
	case "twin":
		out, err = runTwin(j)
	default:
		err = fmt.Errorf("unknown mode %q", j.Mode)
	}
	if err != nil {
		out.Error = err.Error()
		logf("%v", err)
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
	if err != nil {
		os.Exit(1)
	}
}
