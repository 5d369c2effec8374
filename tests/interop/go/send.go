// send: sends COUNT records to a Fluentd forward endpoint with
// fluent-logger-golang and RequestAck, the way Docker's fluentd log driver
// does.
//
//	send HOST PORT TAG COUNT
//
// Each record is {"seq": i, "msg": "..."}. Exits 0 once every Post
// returned (each waits for its ack), 1 on any error or after 60 s (the
// library waits for an ack without a timeout), 2 on bad arguments.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: send HOST PORT TAG COUNT")
		os.Exit(2)
	}
	host, tag := os.Args[1], os.Args[3]
	port, err1 := strconv.Atoi(os.Args[2])
	count, err2 := strconv.Atoi(os.Args[4])
	if err1 != nil || err2 != nil || count < 0 {
		fmt.Fprintln(os.Stderr, "send: PORT and COUNT must be integers")
		os.Exit(2)
	}
	go func() {
		time.Sleep(60 * time.Second)
		fmt.Fprintln(os.Stderr, "send: timed out after 60 s")
		os.Exit(1)
	}()
	logger, err := fluent.New(fluent.Config{
		FluentHost: host,
		FluentPort: port,
		RequestAck: true,
		Timeout:    10 * time.Second,
		MaxRetry:   1,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "send: connect failed: %v\n", err)
		os.Exit(1)
	}
	for i := 0; i < count; i++ {
		rec := map[string]interface{}{"seq": i, "msg": fmt.Sprintf("record %d from fluent-logger-golang", i)}
		if err := logger.Post(tag, rec); err != nil {
			fmt.Fprintf(os.Stderr, "send: post %d failed: %v\n", i, err)
			os.Exit(1)
		}
	}
	logger.Close()
	fmt.Printf("sent %d records, every one acknowledged\n", count)
}
