package cluster

import (
	"context"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// podWatch runs a supervisor's reconcile, one call at a time, once its pod
// informer has synced and again whenever a pod it sees changes: the
// supervisors of istiod and of proxyless pods are loops of this shape.
type podWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	// wake asks the loop to look again; one pending wake is enough.
	wake chan struct{}
}

// start begins watching the pods opts select through kube.
func (w *podWatch) start(ctx context.Context, kube kubernetes.Interface, reconcile func(context.Context, listersv1.PodLister), opts ...informers.SharedInformerOption) error {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	w.wake = make(chan struct{}, 1)
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, opts...)
	pods := factory.Core().V1().Pods()
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.poke() },
		UpdateFunc: func(any, any) { w.poke() },
		DeleteFunc: func(any) { w.poke() },
	}); err != nil {
		w.cancel()
		return err
	}
	factory.Start(ctx.Done())
	go func() {
		defer close(w.done)
		defer factory.Shutdown()
		if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced) {
			return
		}
		lister := pods.Lister()
		for {
			reconcile(ctx, lister)
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
		}
	}()
	return nil
}

func (w *podWatch) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// stop ends the watch and waits for a running reconcile to return.
func (w *podWatch) stop() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
}
